//! The confusion matrix as a picture: rows are ground-truth classes,
//! columns the clusters in matched order (cluster matched to class i in
//! column i, unmatched clusters last), each row normalised to its class's
//! pixels, darker = more. Row/column numbers are drawn on the edges.
//! Also a plain bar chart ([`bar_chart`], e.g. per-layer quantization error).

use image::{Rgb, RgbImage};

use super::Confusion;
use crate::pipeline::postprocess::draw_text;

const CELL: u32 = 24;
const MARGIN: u32 = 40;

/// Renders `confusion` under `assignment` (cluster → class).
pub fn confusion_image(confusion: &Confusion, assignment: &[Option<usize>]) -> RgbImage {
    let classes = confusion.classes();
    let mut columns: Vec<usize> = (0..classes).filter_map(|c| assignment.iter().position(|a| *a == Some(c))).collect();
    columns.extend((0..confusion.clusters()).filter(|k| assignment[*k].is_none()));
    let (w, h) = (MARGIN + CELL * columns.len() as u32, MARGIN + CELL * classes as u32);
    let mut image = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for class in 0..classes {
        let row_total: u64 = (0..confusion.clusters()).map(|k| confusion.get(k, class)).sum();
        draw_text(&mut image, &format!("{class:>2}"), 8, MARGIN + class as u32 * CELL + 8, 1, [0, 0, 0]);
        for (col, &cluster) in columns.iter().enumerate() {
            let share = confusion.get(cluster, class) as f64 / row_total.max(1) as f64;
            let shade = (255.0 * (1.0 - share)) as u8;
            for y in 0..CELL - 1 {
                for x in 0..CELL - 1 {
                    image.put_pixel(MARGIN + col as u32 * CELL + x, MARGIN + class as u32 * CELL + y, Rgb([shade, shade, 255]));
                }
            }
        }
    }
    for (col, &cluster) in columns.iter().enumerate() {
        draw_text(&mut image, &format!("{cluster:>2}"), MARGIN + col as u32 * CELL + 4, 16, 1, [0, 0, 0]);
    }
    image
}

const BAR: u32 = 6;
const BAR_HEIGHT: u32 = 200;

/// A bar per value (heights relative to the largest), left to right, with
/// `title` and the largest value written above.
pub fn bar_chart(values: &[f64], title: &str) -> RgbImage {
    let top = values.iter().copied().fold(0.0, f64::max);
    let width = (2 * MARGIN + BAR * values.len() as u32).max(8 * title.len() as u32 + 16);
    let mut image = RgbImage::from_pixel(width, BAR_HEIGHT + 2 * MARGIN, Rgb([255, 255, 255]));
    draw_text(&mut image, title, 8, 8, 1, [0, 0, 0]);
    draw_text(&mut image, &format!("max {top:.3e}"), 8, 22, 1, [0, 0, 0]);
    let base = MARGIN + BAR_HEIGHT;
    for (i, &v) in values.iter().enumerate() {
        let h = if top > 0.0 { (v.max(0.0) / top * BAR_HEIGHT as f64).round() as u32 } else { 0 };
        for y in base - h..base {
            for x in 0..BAR - 1 {
                image.put_pixel(MARGIN + i as u32 * BAR + x, y, Rgb([70, 100, 200]));
            }
        }
    }
    for x in MARGIN..MARGIN + BAR * values.len() as u32 {
        image.put_pixel(x, base, Rgb([0, 0, 0]));
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matched_cells_sit_on_the_diagonal() {
        let mut c = Confusion::new(2, 2);
        c.add(1, 0); // cluster 1 is class 0
        c.add(0, 1);
        let image = confusion_image(&c, &c.hungarian());
        assert_eq!(image.dimensions(), (MARGIN + 2 * CELL, MARGIN + 2 * CELL));
        assert_eq!(image.get_pixel(MARGIN + 2, MARGIN + 2), &Rgb([0, 0, 255])); // full row share
        assert_eq!(image.get_pixel(MARGIN + CELL + 2, MARGIN + 2), &Rgb([255, 255, 255]));
    }

    #[test]
    fn the_largest_bar_is_full_height() {
        let image = bar_chart(&[0.5, 1.0, 0.0], "t");
        let bar = Rgb([70, 100, 200]);
        assert_eq!(image.get_pixel(MARGIN + BAR + 1, MARGIN), &bar);
        assert_ne!(image.get_pixel(MARGIN + 1, MARGIN), &bar);
        assert_eq!(image.get_pixel(MARGIN + 1, MARGIN + BAR_HEIGHT - 1), &bar);
        assert_ne!(image.get_pixel(MARGIN + 2 * BAR + 1, MARGIN + BAR_HEIGHT - 1), &bar);
    }
}
