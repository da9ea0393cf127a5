//! How an error reaches the user of a command: one line.

/// An error and its causes on one line ("outer: inner: root"), skipping
/// causes whose text the outer message already contains.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_join_on_one_line_without_repeating_themselves() {
        let root = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let error = anyhow::Error::new(root).context("/data: No such file or directory (os error 2)").context("reading images");
        assert_eq!(one_line(&error), "reading images: /data: No such file or directory (os error 2)");
        assert_eq!(one_line(&anyhow::anyhow!("two\nlines")), "two lines");
    }
}
