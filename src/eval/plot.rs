//! The confusion matrix as a picture: rows are ground-truth classes,
//! columns the clusters in matched order (cluster matched to class i in
//! column i, unmatched clusters last), each row normalised to its class's
//! pixels, darker = more. Row/column numbers are drawn on the edges.

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
}
