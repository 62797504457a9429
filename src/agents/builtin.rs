//! The built-in agent: a text analyst that runs inside the server so a fresh install
//! completes its first task. It is a normal registered agent (capabilities `general`
//! and `text`) driven by the same `runner` loop as `zerostate agent run`, over HTTP
//! against the server's own address; only its executor is in-process.
//!
//! The work is real: statistics (characters, words, sentences), the top keywords with
//! stop words removed, and an extractive summary of the highest-scoring sentences.
//! Progress is reported after each step (10, 40, 70; completion sets 100), and the
//! findings stream as output while they are computed: the statistics, each keyword as
//! it is ranked, then the summary word by word, sentence by sentence as each is chosen.

use super::runner::{self, ClaimedTask, ExecOutcome, Executor, RunnerConfig, TaskEvent};
use super::AgentService;
use crate::auth::secret::NewSecret;
use crate::domain::OutputStream;
use crate::shutdown::Shutdown;
use async_trait::async_trait;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Tasks the built-in agent runs at the same time.
const CONCURRENCY: usize = 2;

/// Registers (or re-keys) the built-in agent with `token` (`TokenSigner::builtin_agent_token`) and runs it against the server listening
/// on `addr` until shutdown. Errors are logged: the server keeps serving without it.
pub async fn run(agents: AgentService, token: NewSecret, addr: SocketAddr, shutdown: Shutdown) {
    let (agent, token) = match agents.ensure_builtin(token).await {
        Ok(found) => found,
        Err(err) => {
            tracing::error!(error = %err, "built-in agent not started");
            return;
        }
    };
    // A wildcard listen address is reached through loopback.
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let config = RunnerConfig {
        server: format!("http://{}", SocketAddr::new(ip, addr.port())),
        token: token.value,
        concurrency: CONCURRENCY,
    };
    tracing::info!(agent_id = %agent.id, "built-in agent running");
    if let Err(err) = runner::run(config, Arc::new(TextAnalyst), shutdown).await {
        tracing::error!(error = format!("{err:#}"), "built-in agent stopped");
    }
}

/// Keywords listed in the result.
const TOP_KEYWORDS: usize = 8;
/// Sentences in the summary, at most.
const SUMMARY_SENTENCES: usize = 3;

/// Common English words that carry no topic.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "also",
    "may",
    "might",
    "must",
    "shall",
    "us",
    "let",
    "get",
    "got",
];

/// The in-process text analyst.
#[derive(Debug, Default)]
pub struct TextAnalyst;

#[async_trait]
impl Executor for TextAnalyst {
    async fn execute(
        &self,
        task: &ClaimedTask,
        events: mpsc::Sender<TaskEvent>,
        cancel: CancellationToken,
    ) -> ExecOutcome {
        let out = Out {
            events: &events,
            cancel: &cancel,
        };
        let text = task.query.as_str();
        let sentences = split_sentences(text);
        let words = words(text);
        let average = average_len(&words);
        let stats = json!({
            "characters": text.chars().count(),
            "words": words.len(),
            "sentences": sentences.len(),
            "average_word_length": average,
        });
        let line = format!(
            "{} characters, {} words, {} sentences (average word length {average}).\n",
            text.chars().count(),
            words.len(),
            sentences.len()
        );
        if out.say(line).await.is_err() || out.step(10).await.is_err() {
            return ExecOutcome::Stopped;
        }

        let frequencies = keyword_frequencies(&words);
        let mut keywords: Vec<(&str, usize)> =
            frequencies.iter().map(|(w, n)| (w.as_str(), *n)).collect();
        keywords.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        keywords.truncate(TOP_KEYWORDS);
        if !keywords.is_empty() && out.say("Keywords:".to_owned()).await.is_err() {
            return ExecOutcome::Stopped;
        }
        for (word, count) in &keywords {
            if out.say(format!(" {word} ({count})")).await.is_err() {
                return ExecOutcome::Stopped;
            }
        }
        let keywords_json: Vec<_> = keywords
            .iter()
            .map(|(w, n)| json!({ "word": w, "count": n }))
            .collect();
        if (!keywords.is_empty() && out.say("\n".to_owned()).await.is_err())
            || out.step(40).await.is_err()
        {
            return ExecOutcome::Stopped;
        }

        let chosen = summary_sentences(&sentences, &frequencies);
        if !chosen.is_empty() && out.say("Summary:".to_owned()).await.is_err() {
            return ExecOutcome::Stopped;
        }
        // Word by word, as a language model would stream its tokens.
        for sentence in &chosen {
            for word in sentence.split_whitespace() {
                if out.say(format!(" {word}")).await.is_err() {
                    return ExecOutcome::Stopped;
                }
            }
        }
        let summary = chosen.join(" ");
        if (!chosen.is_empty() && out.say("\n".to_owned()).await.is_err())
            || out.step(70).await.is_err()
        {
            return ExecOutcome::Stopped;
        }

        ExecOutcome::Completed(json!({
            "agent": "builtin",
            "statistics": stats,
            "keywords": keywords_json,
            "summary": summary,
        }))
    }
}

/// Where the analyst reports to; every call returns `Err` once the task is to stop.
struct Out<'a> {
    events: &'a mpsc::Sender<TaskEvent>,
    cancel: &'a CancellationToken,
}

impl Out<'_> {
    /// Reports a step and gives the runtime a turn.
    async fn step(&self, value: u8) -> Result<(), ()> {
        self.send(TaskEvent::Progress {
            value,
            message: None,
        })
        .await?;
        tokio::task::yield_now().await;
        self.check()
    }

    /// Streams a piece of the findings as output.
    async fn say(&self, text: String) -> Result<(), ()> {
        self.send(TaskEvent::Output {
            stream: OutputStream::Output,
            text,
        })
        .await
    }

    async fn send(&self, event: TaskEvent) -> Result<(), ()> {
        self.check()?;
        let _ = self.events.send(event).await;
        self.check()
    }

    fn check(&self) -> Result<(), ()> {
        if self.cancel.is_cancelled() {
            Err(())
        } else {
            Ok(())
        }
    }
}

/// Sentences: runs of text ending in `.`, `!` or `?` (or the end), trimmed, non-empty.
fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if matches!(c, '.' | '!' | '?' | '\n') {
            let s = current.trim();
            if s.chars().any(char::is_alphanumeric) {
                sentences.push(s.to_owned());
            }
            current.clear();
        }
    }
    let s = current.trim();
    if s.chars().any(char::is_alphanumeric) {
        sentences.push(s.to_owned());
    }
    sentences
}

/// Lower-cased words: runs of letters, digits and inner apostrophes.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

fn average_len(words: &[String]) -> f64 {
    if words.is_empty() {
        return 0.0;
    }
    let total: usize = words.iter().map(|w| w.chars().count()).sum();
    (total as f64 / words.len() as f64 * 100.0).round() / 100.0
}

/// Counts of words that can be keywords: not stop words, at least 3 characters, not
/// plain numbers.
fn keyword_frequencies(words: &[String]) -> HashMap<String, usize> {
    let stop: HashSet<&str> = STOP_WORDS.iter().copied().collect();
    let mut freq = HashMap::new();
    for w in words {
        if w.chars().count() >= 3
            && !stop.contains(w.as_str())
            && !w.chars().all(|c| c.is_ascii_digit())
        {
            *freq.entry(w.clone()).or_insert(0) += 1;
        }
    }
    freq
}

/// The highest-scoring sentences in their original order. A sentence scores the sum of
/// its keywords' frequencies divided by the square root of its length, so long
/// sentences do not win on length alone.
fn summary_sentences<'a>(sentences: &'a [String], freq: &HashMap<String, usize>) -> Vec<&'a str> {
    let mut scored: Vec<(usize, f64)> = sentences
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let ws = words(s);
            let sum: usize = ws.iter().filter_map(|w| freq.get(w)).sum();
            let score = if ws.is_empty() {
                0.0
            } else {
                sum as f64 / (ws.len() as f64).sqrt()
            };
            (i, score)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = scored
        .iter()
        .take(SUMMARY_SENTENCES)
        .map(|(i, _)| *i)
        .collect();
    chosen.sort_unstable();
    chosen.iter().map(|i| sentences[*i].as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_keywords_and_summary() {
        let text = "Rust is fast. Rust is safe! The borrow checker keeps Rust programs safe? \
                    Cats sleep.";
        assert_eq!(split_sentences(text).len(), 4);
        let ws = words(text);
        assert_eq!(ws.len(), 15);
        let freq = keyword_frequencies(&ws);
        assert_eq!(freq["rust"], 3);
        assert!(!freq.contains_key("the") && !freq.contains_key("is"));
        let summary = summary_sentences(&split_sentences(text), &freq).join(" ");
        assert!(summary.contains("Rust"));
        assert!(!summary.contains("Cats"));
    }
}
