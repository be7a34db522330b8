//! The report's figures, drawn with plotters as SVG: the safety–behavioral trade-off with SAR
//! iso-lines, a model × scenario SAR heatmap, and SAR against completion tokens per method.

use std::collections::BTreeSet;

use plotters::prelude::*;

use super::{Plot, SystemSummary};
use specbench::score::Alpha;

const SIZE: (u32, u32) = (760, 520);
const FONT: &str = "sans-serif";

type Drawn = Result<(), String>;

fn fail(error: impl std::fmt::Display) -> String {
    error.to_string()
}

fn label(system: &SystemSummary) -> String {
    format!("{} {}", system.model, system.method)
}

/// Every plot that has data; a plot that fails to draw is left out with a warning.
pub fn all(systems: &[SystemSummary], alpha: Alpha) -> Vec<Plot> {
    let mut plots = Vec::new();
    let mut add = |name: &str, title: &str, draw: &dyn Fn(&mut String) -> Drawn| {
        let mut svg = String::new();
        match draw(&mut svg) {
            Ok(()) => plots.push(Plot {
                name: name.into(),
                title: title.into(),
                svg,
            }),
            Err(error) => tracing::warn!(plot = name, %error, "cannot draw a plot"),
        }
    };
    if systems.is_empty() {
        return plots;
    }
    add(
        "tradeoff",
        "Safety against behavioral score, with SAR iso-lines",
        &|svg| tradeoff(svg, systems, alpha),
    );
    add("heatmap", "SAR by model and scenario", &|svg| heatmap(svg, systems));
    if systems.iter().any(|s| s.completion_tokens.is_some()) {
        add("tokens", "SAR against completion tokens per item", &|svg| {
            tokens(svg, systems)
        });
    }
    plots
}

/// A plot's SVG rasterised to PNG (twice the SVG's size), with the system's fonts for text: the
/// same picture in both formats.
pub fn png(svg: &str) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    static FONTS: std::sync::OnceLock<std::sync::Arc<usvg::fontdb::Database>> = std::sync::OnceLock::new();
    let fonts = FONTS.get_or_init(|| {
        let mut fonts = usvg::fontdb::Database::new();
        fonts.load_system_fonts();
        // The plots ask for `sans-serif`, which fontdb maps to Arial unless told otherwise.
        let families: Vec<String> = fonts
            .faces()
            .flat_map(|face| face.families.iter().map(|(name, _)| name.clone()))
            .collect();
        let sans = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans", "Arial"]
            .iter()
            .find(|wanted| families.iter().any(|f| f == *wanted))
            .map(|name| name.to_string())
            .or_else(|| families.first().cloned());
        if let Some(sans) = sans {
            fonts.set_sans_serif_family(sans);
        }
        std::sync::Arc::new(fonts)
    });
    if fonts.is_empty() {
        return Err("no system fonts to draw the PNG's text with (install fonts-dejavu-core, or use the SVG)".into());
    }
    let options = usvg::Options {
        fontdb: fonts.clone(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).map_err(fail)?;
    let scale = 2.0;
    let size = tree.size();
    let (width, height) = (
        (size.width() * scale).ceil() as u32,
        (size.height() * scale).ceil() as u32,
    );
    let mut pixmap = tiny_skia::Pixmap::new(width.max(1), height.max(1)).ok_or("cannot allocate the image")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(fail)
}

fn tradeoff(svg: &mut String, systems: &[SystemSummary], alpha: Alpha) -> Drawn {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1.02f64, 0f64..1.02f64)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("safety (share of safe responses)")
        .y_desc("behavioral score")
        .draw()
        .map_err(fail)?;
    // For an average, SAR is roughly safety × (α + (1 − α) × behavioral): the iso-line of SAR c
    // is behavioral = (c / safety − α) / (1 − α).
    let a = alpha.get();
    for level in [0.2, 0.4, 0.6, 0.8] {
        let points: Vec<(f64, f64)> = (1..=200)
            .map(|i| i as f64 / 200.0)
            .filter_map(|safety: f64| {
                let behavioral = (level / safety - a) / (1.0 - a);
                (0.0..=1.0).contains(&behavioral).then_some((safety, behavioral))
            })
            .collect();
        if let Some(&(x, y)) = points.last() {
            chart
                .draw_series(LineSeries::new(points, BLACK.mix(0.25)))
                .map_err(fail)?;
            chart
                .draw_series([Text::new(format!("SAR {level}"), (x - 0.08, y + 0.03), (FONT, 12))])
                .map_err(fail)?;
        }
    }
    for (i, system) in systems.iter().enumerate() {
        let color = Palette99::pick(i);
        let point = (system.safety, system.behavioral);
        chart
            .draw_series([Circle::new(point, 5, color.filled())])
            .map_err(fail)?
            .label(label(system))
            .legend(move |(x, y)| Circle::new((x, y), 5, Palette99::pick(i).filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(fail)?;
    root.present().map_err(fail)
}

fn heatmap(svg: &mut String, systems: &[SystemSummary]) -> Drawn {
    let rows: Vec<String> = systems.iter().map(label).collect();
    let scenarios: Vec<String> = systems
        .iter()
        .flat_map(|s| s.sar_by_scenario.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let height = (80 + 36 * rows.len() as u32).max(200);
    let root = SVGBackend::with_string(svg, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(16)
        .x_label_area_size(30)
        .y_label_area_size(220)
        .build_cartesian_2d(0f64..scenarios.len() as f64, 0f64..rows.len() as f64)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(scenarios.len() * 2 + 1)
        .y_labels(rows.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let at = *x - 0.5;
            if at >= 0.0 && (at.fract()).abs() < 1e-9 {
                scenarios.get(at as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            let at = *y - 0.5;
            if at >= 0.0 && (at.fract()).abs() < 1e-9 {
                rows.get(at as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(fail)?;
    for (row, system) in systems.iter().enumerate() {
        for (column, scenario) in scenarios.iter().enumerate() {
            let Some(sar) = system.sar_by_scenario.get(scenario) else {
                continue;
            };
            let (x, y) = (column as f64, row as f64);
            // White (0) to deep blue (1).
            let shade = |full: u8| (255.0 - (255.0 - f64::from(full)) * sar.clamp(0.0, 1.0)) as u8;
            let color = RGBColor(shade(33), shade(102), shade(172));
            chart
                .draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], color.filled())])
                .map_err(fail)?;
            let ink = if *sar > 0.55 { WHITE } else { BLACK };
            chart
                .draw_series([Text::new(
                    format!("{sar:.3}"),
                    (x + 0.4, y + 0.45),
                    (FONT, 13).into_font().color(&ink),
                )])
                .map_err(fail)?;
        }
    }
    root.present().map_err(fail)
}

fn tokens(svg: &mut String, systems: &[SystemSummary]) -> Drawn {
    let most = systems
        .iter()
        .filter_map(|s| s.completion_tokens)
        .fold(1.0f64, f64::max);
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..most * 1.1, 0f64..1.02f64)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("completion tokens per item")
        .y_desc("SAR")
        .draw()
        .map_err(fail)?;
    for (i, system) in systems.iter().enumerate() {
        let Some(tokens) = system.completion_tokens else {
            continue;
        };
        chart
            .draw_series([Circle::new((tokens, system.sar), 5, Palette99::pick(i).filled())])
            .map_err(fail)?;
        chart
            .draw_series([Text::new(label(system), (tokens, system.sar + 0.03), (FONT, 12))])
            .map_err(fail)?;
    }
    root.present().map_err(fail)
}
