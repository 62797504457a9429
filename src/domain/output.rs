//! Task output: the chunks an agent streams while it works (LLM tokens, log lines).
//!
//! A chunk is numbered by `seq`, gapless per task and starting at 1, so a reader that
//! has seen up to `N` asks for `seq > N` and can never miss or repeat one.

use super::ParseError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt;

/// Most text (UTF-8 bytes, all chunks together) one append may carry.
pub const MAX_APPEND_BYTES: usize = 64 * 1024;
/// Most chunks one append may carry (each costs a row, whatever its size).
pub const MAX_APPEND_CHUNKS: usize = 10_000;
/// A task's output at most, unless the operator sets `--task-output-max-bytes`.
pub const DEFAULT_TASK_OUTPUT_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Which stream a chunk belongs to: what the task produces (`output`) or what it says
/// about its work (`log`, a shell command's stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    #[default]
    Output,
    Log,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Output => "output",
            OutputStream::Log => "log",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "output" => Ok(OutputStream::Output),
            "log" => Ok(OutputStream::Log),
            _ => Err(ParseError::new("stream must be \"output\" or \"log\"")),
        }
    }
}

impl fmt::Display for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chunk as an agent hands it in, before it has a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChunk {
    pub stream: OutputStream,
    pub text: String,
}

/// The chunks of one append: 1 to `MAX_APPEND_CHUNKS` non-empty chunks of at most
/// `MAX_APPEND_BYTES` of text together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBatch {
    chunks: Vec<NewChunk>,
    bytes: u64,
}

/// Why a batch was refused: invalid (400) or too large (413 `output_limit`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("{0}")]
    Invalid(ParseError),
    #[error("one append may carry at most {MAX_APPEND_BYTES} bytes of text")]
    TooLarge,
}

impl ChunkBatch {
    pub fn parse(chunks: Vec<NewChunk>) -> Result<Self, BatchError> {
        if chunks.is_empty() {
            return Err(BatchError::Invalid(ParseError::new(
                "chunks must hold at least one chunk",
            )));
        }
        if chunks.len() > MAX_APPEND_CHUNKS {
            return Err(BatchError::Invalid(ParseError::new(format!(
                "one append may carry at most {MAX_APPEND_CHUNKS} chunks"
            ))));
        }
        if chunks.iter().any(|c| c.text.is_empty()) {
            return Err(BatchError::Invalid(ParseError::new(
                "text must not be empty",
            )));
        }
        let bytes: usize = chunks.iter().map(|c| c.text.len()).sum();
        if bytes > MAX_APPEND_BYTES {
            return Err(BatchError::TooLarge);
        }
        Ok(Self {
            chunks,
            bytes: bytes as u64,
        })
    }

    pub fn chunks(&self) -> &[NewChunk] {
        &self.chunks
    }

    /// Bytes of text in the batch.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Never true for a parsed batch; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// A stored chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputChunk {
    pub seq: u64,
    pub stream: OutputStream,
    pub text: String,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str) -> NewChunk {
        NewChunk {
            stream: OutputStream::Output,
            text: text.into(),
        }
    }

    #[test]
    fn streams_parse() {
        assert_eq!(OutputStream::parse("log").unwrap(), OutputStream::Log);
        assert_eq!(OutputStream::parse("output").unwrap(), OutputStream::Output);
        assert!(OutputStream::parse("stderr").is_err());
    }

    #[test]
    fn batch_bounds() {
        assert!(matches!(
            ChunkBatch::parse(vec![]),
            Err(BatchError::Invalid(_))
        ));
        assert!(matches!(
            ChunkBatch::parse(vec![chunk("")]),
            Err(BatchError::Invalid(_))
        ));
        let full = "x".repeat(MAX_APPEND_BYTES);
        assert_eq!(
            ChunkBatch::parse(vec![chunk(&full)]).unwrap().bytes(),
            MAX_APPEND_BYTES as u64
        );
        assert_eq!(
            ChunkBatch::parse(vec![chunk(&full), chunk("y")]),
            Err(BatchError::TooLarge)
        );
        // Bytes, not characters: 'é' is two.
        let wide = "é".repeat(MAX_APPEND_BYTES / 2 + 1);
        assert_eq!(
            ChunkBatch::parse(vec![chunk(&wide)]),
            Err(BatchError::TooLarge)
        );
    }
}
