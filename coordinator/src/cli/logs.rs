//! `outloud logs JOB [--step S] [--task T] [--follow] [--json]`: the task logs workers
//! shipped to the job's storage, read through the coordinator (so a user needs no
//! storage credentials), printed as lines or as JSON, and followed until the job ends.

use std::collections::HashMap;
use std::time::Duration;

use outloud_core::client::Connection;
use outloud_proto::v1 as pb;
use serde_json::Value;

/// How often `--follow` asks for new chunks.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct Logs {
    job: String,
    /// Only this step's tasks (e.g. `language`, `language.eval`).
    #[arg(long)]
    step: Option<String>,
    /// Only this task of the step: its shard index.
    #[arg(long, requires = "step")]
    task: Option<u32>,
    /// Keep printing new lines until the job has finished.
    #[arg(long, short)]
    follow: bool,
    /// One JSON object a line, as shipped, with its `stream`.
    #[arg(long)]
    json: bool,
}

pub async fn run(connection: &Connection, logs: Logs) -> anyhow::Result<()> {
    let mut read = HashMap::new();
    loop {
        let request = pb::ReadLogsRequest {
            job_id: logs.job.clone(),
            step: logs.step.clone().unwrap_or_default(),
            shard: logs.task,
            read: read.clone(),
        };
        let answer = connection.jobs().read_logs(request).await?.into_inner();
        for chunk in &answer.chunks {
            for line in chunk.text.lines() {
                println!("{}", shown(line, &chunk.stream, logs.json));
            }
        }
        let got_any = !answer.chunks.is_empty();
        read = answer.read;
        if answer.more {
            continue;
        }
        // Workers ship a task's last chunk before reporting its end: once the job has
        // finished and an answer brings nothing, nothing more will come.
        if !logs.follow || (answer.finished && !got_any) {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// A shipped line as printed: `12:03:04.567 INFO language/attempt-1/rank-0: message
/// k=v`, or with `json` the line itself with its stream added.
fn shown(line: &str, stream: &str, json: bool) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(line) else {
        return format!("{stream}: {line}");
    };
    if json {
        value["stream"] = stream.into();
        return value.to_string();
    }
    let ts = value["ts_ms"].as_u64().map(clock).unwrap_or_default();
    let level = value["level"].as_str().unwrap_or("?");
    let message = value["message"].as_str().unwrap_or_default();
    let mut out = format!("{ts} {level:>5} {stream}: {message}");
    if let Some(fields) = value["fields"].as_object() {
        for (name, field) in fields {
            match field.as_str() {
                Some(text) => out += &format!(" {name}={text}"),
                None => out += &format!(" {name}={field}"),
            }
        }
    }
    out
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let (seconds, millis) = (ms / 1000, ms % 1000);
    let day = seconds % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_print_with_time_level_stream_and_fields() {
        let line = r#"{"ts_ms":1795774256399,"level":"INFO","message":"step","fields":{"loss":2.5,"phase":"a"}}"#;
        assert_eq!(
            shown(line, "language/attempt-1/rank-0", false),
            "10:10:56.399  INFO language/attempt-1/rank-0: step loss=2.5 phase=a"
        );
        let json: Value = serde_json::from_str(&shown(line, "s", true)).unwrap();
        assert_eq!(json["stream"], "s");
        assert_eq!(json["fields"]["loss"], 2.5);
        assert_eq!(shown("not json", "s", false), "s: not json");
    }
}
