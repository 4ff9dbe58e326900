//! `GET /metrics`: the engine's counters in Prometheus' text exposition format (0.0.4).

use std::fmt::Write;

use crate::engine::EngineStats;

/// The content type Prometheus scrapes.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `stats` (and the server's requests in flight) as `model_*` metrics.
pub(crate) fn render(stats: &EngineStats, in_flight: usize) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let (gauge, counter) = ("gauge", "counter");
    metric(
        "model_requests_waiting",
        gauge,
        "Requests waiting for admission.",
        stats.waiting as f64,
    );
    metric(
        "model_sequences_running",
        gauge,
        "Sequences (samples) running.",
        stats.running as f64,
    );
    metric(
        "model_cache_pages_used",
        gauge,
        "Latent-cache pages in use by sequences and the prefix cache (shared pages once).",
        stats.pages_used as f64,
    );
    metric(
        "model_prefix_cache_pages",
        gauge,
        "Pages the prefix cache holds (also counted in model_cache_pages_used).",
        stats.prefix_cache_pages as f64,
    );
    metric(
        "model_cache_pages_reserved",
        gauge,
        "Cache pages reserved by admitted requests' worst cases.",
        stats.pages_reserved as f64,
    );
    metric(
        "model_cache_pages_total",
        gauge,
        "Cache pages the budget holds.",
        stats.pages_total as f64,
    );
    metric(
        "model_server_requests_in_flight",
        gauge,
        "HTTP requests submitted to the engine whose responses have not ended.",
        in_flight as f64,
    );
    metric(
        "model_prompt_tokens_total",
        counter,
        "Prompt tokens prefilled.",
        stats.prompt_tokens as f64,
    );
    metric(
        "model_prompt_tokens_reused_total",
        counter,
        "Prompt tokens taken from the prefix cache instead of prefilled.",
        stats.prompt_tokens_reused as f64,
    );
    metric(
        "model_generation_tokens_total",
        counter,
        "Tokens generated.",
        stats.generated_tokens as f64,
    );
    metric(
        "model_requests_finished_total",
        counter,
        "Requests finished (all samples).",
        stats.requests_finished as f64,
    );
    metric(
        "model_requests_aborted_total",
        counter,
        "Requests cancelled or failed.",
        stats.requests_aborted as f64,
    );
    metric(
        "model_engine_steps_total",
        counter,
        "Engine steps run.",
        stats.steps as f64,
    );
    let name = "model_time_to_first_token_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from submission to the first token (admission wait included).\n\
         # TYPE {name} summary\n{name}_sum {}\n{name}_count {}",
        stats.ttft_sum_secs, stats.ttft_count
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_one_sample() {
        let stats = EngineStats {
            waiting: 2,
            pages_total: 512,
            generated_tokens: 7,
            ttft_sum_secs: 0.5,
            ttft_count: 3,
            ..EngineStats::default()
        };
        let text = render(&stats, 1);
        assert!(text.contains("\nmodel_requests_waiting 2\n"));
        assert!(text.contains("\nmodel_cache_pages_total 512\n"));
        assert!(text.contains("\nmodel_generation_tokens_total 7\n"));
        assert!(text.contains("\nmodel_server_requests_in_flight 1\n"));
        assert!(text.contains("\nmodel_time_to_first_token_seconds_sum 0.5\n"));
        assert!(text.contains("\nmodel_time_to_first_token_seconds_count 3\n"));
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(names.len(), 14);
        for name in names {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(name.starts_with("model_"), "{name}");
        }
    }
}
