//! `specbench report`: stored results in, tables and plots out.

use std::io::Write;
use std::path::Path;

use specbench_report::render::{self, Format};
use specbench_report::{self as report, Filter, Prices, ReportOptions, RuleTexts};

use crate::args::{ReportArgs, ReportFormat};
use crate::commands::{ExitStatus, UsageError, alpha};

/// A results folder to read, or a usage error naming it.
pub(crate) fn results_folder(results: &Path) -> anyhow::Result<()> {
    if results.is_dir() {
        Ok(())
    } else {
        Err(UsageError(format!("{}: no such results folder", results.display())).into())
    }
}

/// Says which folder or file was skipped and why; the others are still read.
pub(crate) fn warn_skipped(skipped: &[specbench::store::StoreError]) {
    for error in skipped {
        tracing::warn!("skipped: {error}");
    }
}

/// Rule texts by scenario from the pack at `data`, for tables and pages that show them; none
/// without a pack.
pub(crate) fn rule_texts(data: Option<&Path>) -> anyhow::Result<RuleTexts> {
    let Some(data) = data else {
        return Ok(RuleTexts::new());
    };
    let pack = crate::commands::load_pack(data)?;
    Ok(pack
        .scenarios
        .into_iter()
        .map(|scenario| (scenario.name, (scenario.rules.safety, scenario.rules.behavioral)))
        .collect())
}

pub fn report(args: ReportArgs) -> anyhow::Result<ExitStatus> {
    results_folder(&args.results)?;
    let alpha = alpha(args.alpha)?;
    if args.resamples == 0 || args.permutations == 0 {
        anyhow::bail!(UsageError("--resamples and --permutations must be at least 1".into()));
    }
    let prices = match &args.prices {
        Some(path) => Prices::load(path).map_err(|e| UsageError(e.to_string()))?,
        None => Prices::default(),
    };
    let rules = rule_texts(args.data.as_deref())?;
    let compare = match args.compare.as_slice() {
        [] => None,
        [a, b] => Some((a.clone(), b.clone())),
        _ => anyhow::bail!(UsageError("--compare takes two models: A,B".into())),
    };
    let filter = Filter {
        models: args.model.clone(),
        scenarios: args.scenario.clone(),
        methods: args.method.clone(),
        judges: args.judge.clone(),
    };
    let loaded = report::load(&args.results, alpha, &filter).map_err(|e| UsageError(e.to_string()))?;
    warn_skipped(&loaded.skipped);
    let runs = loaded.runs;
    let repeats = specbench::study::repeat_folders(&args.results);
    if runs.is_empty() && !repeats.is_empty() {
        // A study with repeats: its runs are one level down, one folder per seed.
        let options = ReportOptions {
            alpha,
            resamples: args.resamples,
            seed: args.seed,
            ..ReportOptions::default()
        };
        let built = repeats_report(&repeats, alpha, &filter, &options)?;
        write_text(&render::render(&built, format(args.format)), args.output.as_deref())?;
        return Ok(ExitStatus::Success);
    }
    if runs.is_empty() {
        anyhow::bail!(UsageError(format!(
            "{}: no judged results (no <judge>_evaluate.json) match",
            args.results.display()
        )));
    }
    let options = ReportOptions {
        alpha,
        baseline: args.baseline.clone(),
        resamples: args.resamples,
        permutations: args.permutations,
        level: 0.95,
        seed: args.seed,
        prices,
        rules,
        compare,
        families: families(args.data.as_deref())?,
    };
    let built = report::build(&runs, &options);
    let text = render::render(&built, format(args.format));
    if let Some(dir) = &args.plots {
        fs_err::create_dir_all(dir)?;
        for plot in &built.plots {
            specbench::store::write_atomic(&dir.join(format!("{}.svg", plot.name)), |out| {
                out.write_all(plot.svg.as_bytes())
            })?;
            let png =
                specbench_report::plots::png(&plot.svg).map_err(|e| anyhow::anyhow!("plot {}: {e}", plot.name))?;
            specbench::store::write_atomic(&dir.join(format!("{}.png", plot.name)), |out| out.write_all(&png))?;
        }
    }
    write_text(&text, args.output.as_deref())?;
    Ok(ExitStatus::Success)
}

/// Model folder name → family (`instruct`, `reasoning`), from the sections of the pack's
/// `config/config_model.yaml`, for the leaderboard's Table 1 grouping; none without a pack.
pub(crate) fn families(data: Option<&Path>) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let Some(data) = data else {
        return Ok(Default::default());
    };
    let path = data.join("config").join("config_model.yaml");
    if !path.is_file() {
        return Ok(Default::default());
    }
    let file = specbench::config::ModelFile::load(&path).map_err(|e| UsageError(e.to_string()))?;
    Ok(file
        .keys()
        .filter_map(|key| {
            let family = file.family(key)?;
            Some((specbench::store::short_name(key).to_string(), family.to_string()))
        })
        .collect())
}

/// The report of a study with repeats: the repeats table, from each repeat's folder.
pub(crate) fn repeats_report(
    folders: &[(u32, std::path::PathBuf)],
    alpha: specbench::score::Alpha,
    filter: &Filter,
    options: &ReportOptions,
) -> anyhow::Result<report::Report> {
    let mut loaded = Vec::with_capacity(folders.len());
    for (r, dir) in folders {
        let runs = report::load(dir, alpha, filter).map_err(|e| UsageError(e.to_string()))?;
        warn_skipped(&runs.skipped);
        loaded.push((format!("repeat-{r}"), runs.runs));
    }
    Ok(report::Report {
        tables: vec![report::repeats::repeats_table(&loaded, options)],
        plots: Vec::new(),
    })
}

/// The renderer's format for the flag's.
pub(crate) fn format(format: ReportFormat) -> Format {
    match format {
        ReportFormat::Table => Format::Table,
        ReportFormat::Markdown => Format::Markdown,
        ReportFormat::Csv => Format::Csv,
        ReportFormat::Json => Format::Json,
        ReportFormat::Html => Format::Html,
    }
}

/// A rendered report to `output` (written atomically), else to the terminal.
pub(crate) fn write_text(text: &str, output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => specbench::store::write_atomic(path, |out| out.write_all(text.as_bytes()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
