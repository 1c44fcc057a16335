//! Typed results on the wire: benchmark scores, probes, counters, prepared sources and
//! GLUE scores, both ways.

use outloud_proto::v1 as pb;

use super::{from_wire, to_wire};
use crate::results::{
    BenchmarkScore, Counts, GlueScore, ProbeScore, ScoreMode, SourceReport, SynthesisCounts,
    TaskResults,
};

const SCORE_MODES: [(ScoreMode, pb::ScoreMode); 2] = [
    (ScoreMode::TextOnly, pb::ScoreMode::TextOnly),
    (ScoreMode::WithPictures, pb::ScoreMode::WithPictures),
];

fn synthesis_counts_to(c: &SynthesisCounts) -> pb::SynthesisCounts {
    pb::SynthesisCounts {
        pictures: c.pictures,
        captions: c.captions,
        kept: c.kept,
        too_short: c.too_short,
        too_long: c.too_long,
        duplicates: c.duplicates,
        unlikely: c.unlikely,
    }
}

fn synthesis_counts_from(c: pb::SynthesisCounts) -> SynthesisCounts {
    SynthesisCounts {
        pictures: c.pictures,
        captions: c.captions,
        kept: c.kept,
        too_short: c.too_short,
        too_long: c.too_long,
        duplicates: c.duplicates,
        unlikely: c.unlikely,
    }
}

pub fn results_to(r: &TaskResults) -> pb::TaskResults {
    pb::TaskResults {
        benchmarks: r
            .benchmarks
            .iter()
            .map(|b| pb::BenchmarkScore {
                benchmark: b.benchmark.clone(),
                file: b.file.clone(),
                // Unspecified (0): not recorded (results migrated from state schema 0).
                mode: b.mode.map_or(0, |m| to_wire(&SCORE_MODES, m)),
                items: b.items,
                correct: b.correct,
                accuracy: b.accuracy,
                chance: b.chance,
                unusable: b.unusable,
            })
            .collect(),
        probes: r
            .probes
            .iter()
            .map(|p| pb::ProbeScore {
                name: p.name.clone(),
                value: p.value,
                chance: p.chance,
                items: p.items,
            })
            .collect(),
        counts: Some(pb::Counts {
            items_scored: r.counts.items_scored,
            items_unusable: r.counts.items_unusable,
            images_skipped: r.counts.images_skipped,
            synthesis: Some(synthesis_counts_to(&r.counts.synthesis)),
        }),
        sources: r
            .sources
            .iter()
            .map(|s| pb::SourceReport {
                name: s.name.clone(),
                url: s.url.clone(),
                files: s.files,
            })
            .collect(),
        glue: r
            .glue
            .iter()
            .map(|g| pb::GlueScore {
                task: g.task.clone(),
                items: g.items,
                correct: g.correct,
                accuracy: g.accuracy,
                f1: g.f1,
                majority: g.majority,
                best_epoch: g.best_epoch,
                steps: g.steps,
                malformed: g.malformed,
                not_run: g.not_run.clone(),
                predictions: g.predictions.clone(),
            })
            .collect(),
    }
}

pub fn results_from(r: Option<pb::TaskResults>) -> TaskResults {
    let r = r.unwrap_or_default();
    let counts = r.counts.unwrap_or_default();
    TaskResults {
        benchmarks: r
            .benchmarks
            .into_iter()
            .map(|b| BenchmarkScore {
                mode: from_wire(&SCORE_MODES, b.mode, "score mode").ok(),
                benchmark: b.benchmark,
                file: b.file,
                items: b.items,
                correct: b.correct,
                accuracy: b.accuracy,
                chance: b.chance,
                unusable: b.unusable,
            })
            .collect(),
        probes: r
            .probes
            .into_iter()
            .map(|p| ProbeScore {
                name: p.name,
                value: p.value,
                chance: p.chance,
                items: p.items,
            })
            .collect(),
        counts: Counts {
            items_scored: counts.items_scored,
            items_unusable: counts.items_unusable,
            images_skipped: counts.images_skipped,
            synthesis: synthesis_counts_from(counts.synthesis.unwrap_or_default()),
        },
        sources: r
            .sources
            .into_iter()
            .map(|s| SourceReport {
                name: s.name,
                url: s.url,
                files: s.files,
            })
            .collect(),
        glue: r
            .glue
            .into_iter()
            .map(|g| GlueScore {
                task: g.task,
                items: g.items,
                correct: g.correct,
                accuracy: g.accuracy,
                f1: g.f1,
                majority: g.majority,
                best_epoch: g.best_epoch,
                steps: g.steps,
                malformed: g.malformed,
                not_run: g.not_run,
                predictions: g.predictions,
            })
            .collect(),
    }
}
