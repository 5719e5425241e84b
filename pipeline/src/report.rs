//! The picture at the end of `train` and `eval`: an SVG of reward, loss terms, KL and
//! pass@k, so a run can be judged at a glance without a dashboard.
//!
//! Training panels read the learner's `metrics.jsonl` by field name (as JSON values, not
//! through the learner's struct), so an older metrics file, or one with fields added
//! later, still plots what it has.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// Errors of reading metrics or writing the picture; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The metrics file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The SVG could not be drawn or written.
    #[error("{path}: cannot draw the report: {message}")]
    Draw {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points in x order.
    pub points: Vec<(f64, f64)>,
}

/// One chart of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Chart title.
    pub title: String,
    /// What the x axis counts.
    pub x_label: String,
    /// Its lines; empty series are skipped.
    pub series: Vec<Series>,
}

/// Metric fields plotted from `metrics.jsonl`, grouped by panel.
const TRAINING_PANELS: &[(&str, &[&str])] = &[
    ("reward", &["reward_mean", "reward_std"]),
    (
        "loss",
        &["loss", "loss_grpo", "loss_teacher_sft", "loss_self_sft"],
    ),
    ("KL to reference", &["kl"]),
];

/// The training panels of a learner `metrics.jsonl` (x = step). Lines that are not JSON
/// (a torn last line of a killed run) are skipped with a warning, not fatal.
pub fn training_panels(metrics_path: &Path) -> Result<Vec<Panel>, ReportError> {
    let read_error = |source| ReportError::Read {
        path: metrics_path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(metrics_path).map_err(read_error)?;
    let mut columns: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(read_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(row) = serde_json::from_str::<serde_json::Value>(&line) else {
            tracing::warn!(path = %metrics_path.display(), line = index + 1, "skipping a malformed metrics line");
            continue;
        };
        let Some(step) = row.get("step").and_then(serde_json::Value::as_f64) else {
            continue;
        };
        for (_, fields) in TRAINING_PANELS {
            for field in *fields {
                if let Some(value) = row.get(*field).and_then(serde_json::Value::as_f64)
                    && value.is_finite()
                {
                    columns.entry(field).or_default().push((step, value));
                }
            }
        }
    }
    Ok(TRAINING_PANELS
        .iter()
        .map(|(title, fields)| Panel {
            title: title.to_string(),
            x_label: "step".to_string(),
            series: fields
                .iter()
                .map(|field| Series {
                    name: field.to_string(),
                    points: columns.get(field).cloned().unwrap_or_default(),
                })
                .collect(),
        })
        .collect())
}

/// A pass@k panel (x = k) with one line per labelled result, e.g. "before" and "after".
pub fn pass_at_k_panel(results: &[(&str, &BTreeMap<usize, f64>)]) -> Panel {
    Panel {
        title: "pass@k".to_string(),
        x_label: "k".to_string(),
        series: results
            .iter()
            .map(|(label, values)| Series {
                name: label.to_string(),
                points: values
                    .iter()
                    .map(|(&k, &value)| (k as f64, value))
                    .collect(),
            })
            .collect(),
    }
}

const PANEL_WIDTH: u32 = 560;
const PANEL_HEIGHT: u32 = 360;

/// Draws `panels` side by side (two per row) into an SVG file at `path`.
pub fn write_svg(path: &Path, title: &str, panels: &[Panel]) -> Result<(), ReportError> {
    let draw_error = |message: String| ReportError::Draw {
        path: path.to_path_buf(),
        message,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| ReportError::Read {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let columns = panels.len().clamp(1, 2) as u32;
    let rows = panels.len().div_ceil(2).max(1) as u32;
    let root = SVGBackend::new(path, (PANEL_WIDTH * columns, PANEL_HEIGHT * rows + 40))
        .into_drawing_area();
    root.fill(&WHITE)
        .map_err(|err| draw_error(err.to_string()))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|err| draw_error(err.to_string()))?;
    let areas = root.split_evenly((rows as usize, columns as usize));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        draw_panel(area, panel).map_err(draw_error)?;
    }
    root.present().map_err(|err| draw_error(err.to_string()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let points: Vec<(f64, f64)> = panel
        .series
        .iter()
        .flat_map(|series| series.points.iter().copied())
        .collect();
    let (x_range, y_range) = ranges(&points);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(52)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|err| err.to_string())?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .draw()
        .map_err(|err| err.to_string())?;
    if points.is_empty() {
        return Ok(());
    }
    for (index, series) in panel.series.iter().enumerate() {
        if series.points.is_empty() {
            continue;
        }
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                series.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|err| err.to_string())?
            .label(&series.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if series.points.len() <= 12 {
            chart
                .draw_series(
                    series
                        .points
                        .iter()
                        .map(|&point| Circle::new(point, 3, color.filled())),
                )
                .map_err(|err| err.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|err| err.to_string())?;
    Ok(())
}

/// Axis ranges covering the points with a margin; a unit box when there are none.
fn ranges(points: &[(f64, f64)]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    if points.is_empty() {
        return (0.0..1.0, 0.0..1.0);
    }
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let widen = |low: f64, high: f64| {
        let span = (high - low).abs();
        let pad = if span > 0.0 {
            span * 0.05
        } else {
            low.abs().max(1.0) * 0.1
        };
        (low - pad)..(high + pad)
    };
    (widen(x_min, x_max), widen(y_min, y_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_panels_read_fields_and_skip_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(
            &metrics,
            concat!(
                r#"{"step":1,"reward_mean":0.1,"reward_std":0.2,"loss":2.0,"loss_grpo":0.5,"kl":null}"#,
                "\n",
                r#"{"step":2,"reward_mean":0.4,"reward_std":0.3,"loss":1.5,"loss_grpo":0.25,"kl":0.01}"#,
                "\n",
                r#"{"step":3,"reward_me"#,
            ),
        )
        .unwrap();
        let panels = training_panels(&metrics).unwrap();
        assert_eq!(panels.len(), 3);
        let reward = &panels[0].series[0];
        assert_eq!(reward.name, "reward_mean");
        assert_eq!(reward.points, vec![(1.0, 0.1), (2.0, 0.4)]);
        let kl = &panels[2].series[0];
        assert_eq!(kl.points, vec![(2.0, 0.01)]);
        assert!(
            panels[1].series[2].points.is_empty(),
            "no teacher-SFT values were logged"
        );
    }

    #[test]
    fn svg_holds_every_panel_and_series_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/report.svg");
        let before: BTreeMap<usize, f64> = [(1, 0.0), (5, 0.1)].into();
        let after: BTreeMap<usize, f64> = [(1, 0.4), (5, 0.7)].into();
        let panels = vec![
            Panel {
                title: "reward".into(),
                x_label: "step".into(),
                series: vec![Series {
                    name: "reward_mean".into(),
                    points: vec![(1.0, 0.0), (2.0, 0.5)],
                }],
            },
            pass_at_k_panel(&[("before", &before), ("after", &after)]),
            Panel {
                title: "empty".into(),
                x_label: "step".into(),
                series: vec![],
            },
        ];
        write_svg(&path, "tgrpo run", &panels).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in [
            "tgrpo run",
            "reward_mean",
            "pass@k",
            "before",
            "after",
            "empty",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
    }

    #[test]
    fn ranges_pad_flat_lines() {
        let (x, y) = ranges(&[(1.0, 0.5), (1.0, 0.5)]);
        assert!(x.start < 1.0 && x.end > 1.0);
        assert!(y.start < 0.5 && y.end > 0.5);
    }
}
