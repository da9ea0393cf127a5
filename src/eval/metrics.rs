//! The unsupervised segmentation protocol of CAUSE/STEGO: one confusion
//! matrix over the whole split, Hungarian one-to-one matching of clusters
//! to classes, then mIoU and pixel accuracy.

use pathfinding::prelude::{kuhn_munkres, Matrix};
use serde::Serialize;

/// Pixel counts: `counts[cluster][class]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    clusters: usize,
    classes: usize,
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty `clusters` x `classes` matrix.
    pub fn new(clusters: usize, classes: usize) -> Self {
        Confusion { clusters, classes, counts: vec![0; clusters * classes] }
    }

    /// Adds one pixel predicted as `cluster` with ground truth `class`.
    pub fn add(&mut self, cluster: usize, class: usize) {
        self.counts[cluster * self.classes + class] += 1;
    }

    /// Adds every count of `other` (same shape) to `self`.
    pub fn merge(&mut self, other: &Confusion) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Pixels predicted as `cluster` whose ground truth is `class`.
    pub fn get(&self, cluster: usize, class: usize) -> u64 {
        self.counts[cluster * self.classes + class]
    }

    /// Number of clusters (rows).
    pub fn clusters(&self) -> usize {
        self.clusters
    }

    /// Number of classes (columns).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The one-to-one cluster → class assignment that maximises matched
    /// pixels (Kuhn-Munkres). Clusters left over when there are more
    /// clusters than classes map to `None`.
    pub fn hungarian(&self) -> Vec<Option<usize>> {
        let weight = |cluster: usize, class: usize| self.get(cluster, class) as i64;
        if self.clusters <= self.classes {
            let m = Matrix::from_fn(self.clusters, self.classes, |(k, c)| weight(k, c));
            kuhn_munkres(&m).1.into_iter().map(Some).collect()
        } else {
            let m = Matrix::from_fn(self.classes, self.clusters, |(c, k)| weight(k, c));
            let mut assignment = vec![None; self.clusters];
            for (class, cluster) in kuhn_munkres(&m).1.into_iter().enumerate() {
                assignment[cluster] = Some(class);
            }
            assignment
        }
    }

    /// Metrics under the Hungarian assignment.
    pub fn metrics(&self) -> Metrics {
        let assignment = self.hungarian();
        let total: u64 = self.counts.iter().sum();
        let class_total = |c: usize| (0..self.clusters).map(|k| self.get(k, c)).sum::<u64>();
        let cluster_total = |k: usize| (0..self.classes).map(|c| self.get(k, c)).sum::<u64>();
        let mut matched = 0u64;
        let per_class_iou: Vec<Option<f64>> = (0..self.classes)
            .map(|c| {
                let cluster = assignment.iter().position(|a| *a == Some(c));
                let tp = cluster.map_or(0, |k| self.get(k, c));
                let predicted = cluster.map_or(0, cluster_total);
                matched += tp;
                let union = class_total(c) + predicted - tp;
                (union > 0).then(|| 100.0 * tp as f64 / union as f64)
            })
            .collect();
        let present: Vec<f64> = per_class_iou.iter().flatten().copied().collect();
        Metrics {
            miou: if present.is_empty() { 0.0 } else { present.iter().sum::<f64>() / present.len() as f64 },
            pixel_accuracy: if total == 0 { 0.0 } else { 100.0 * matched as f64 / total as f64 },
            per_class_iou,
            dead_clusters: (0..self.clusters).filter(|&k| cluster_total(k) == 0).count(),
            assignment,
        }
    }
}

/// Scores of one evaluation, percentages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean IoU over classes present in the labels or predictions.
    pub miou: f64,
    /// Matched pixels over labelled pixels.
    pub pixel_accuracy: f64,
    /// IoU per class (`None`: class absent from labels and predictions).
    pub per_class_iou: Vec<Option<f64>>,
    /// Clusters that win no labelled pixel (dead concepts).
    pub dead_clusters: usize,
    /// Class matched to each cluster.
    pub assignment: Vec<Option<usize>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confusion(rows: &[&[u64]]) -> Confusion {
        let mut c = Confusion::new(rows.len(), rows[0].len());
        for (k, row) in rows.iter().enumerate() {
            for (class, &n) in row.iter().enumerate() {
                for _ in 0..n {
                    c.add(k, class);
                }
            }
        }
        c
    }

    #[test]
    fn permuted_perfect_prediction_scores_100() {
        let m = confusion(&[&[0, 5], &[3, 0]]).metrics();
        assert_eq!(m.assignment, vec![Some(1), Some(0)]);
        assert_eq!((m.miou, m.pixel_accuracy), (100.0, 100.0));
    }

    #[test]
    fn hand_computed_scores() {
        // cluster 0: 8 of class 0, 2 of class 1; cluster 1: 2 of class 0, 8 of class 1.
        let m = confusion(&[&[8, 2], &[2, 8]]).metrics();
        assert_eq!(m.assignment, vec![Some(0), Some(1)]);
        // IoU = 8 / (10 + 10 - 8) for both classes.
        assert!((m.miou - 800.0 / 12.0).abs() < 1e-9);
        assert!((m.pixel_accuracy - 80.0).abs() < 1e-9);
    }

    #[test]
    fn matching_is_one_to_one_not_greedy() {
        // Greedy would give cluster 0 → class 0 (9), leaving cluster 1 → class 1 (1): 10.
        // Optimal: cluster 0 → class 1 (8), cluster 1 → class 0 (7): 15.
        let m = confusion(&[&[9, 8], &[7, 1]]).metrics();
        assert_eq!(m.assignment, vec![Some(1), Some(0)]);
        assert!((m.pixel_accuracy - 100.0 * 15.0 / 25.0).abs() < 1e-9);
    }

    #[test]
    fn extra_clusters_stay_unmatched() {
        let m = confusion(&[&[4, 0], &[0, 4], &[1, 1]]).metrics();
        assert_eq!(m.assignment, vec![Some(0), Some(1), None]);
        assert!((m.pixel_accuracy - 80.0).abs() < 1e-9);
    }

    #[test]
    fn more_classes_than_clusters_gives_zero_iou_to_unmatched() {
        let m = confusion(&[&[4, 0, 2]]).metrics();
        assert_eq!(m.assignment, vec![Some(0)]);
        assert_eq!(m.per_class_iou[1], None); // absent everywhere
        assert_eq!(m.per_class_iou[2], Some(0.0));
    }
}
