//! The command line: `serve`, `agent run`, `users create|promote`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "zerostate",
    version,
    about = "Real-time platform for AI agents and their tasks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: JSON API, real-time hub and web pages.
    Serve(ServeArgs),
    /// Operator commands on accounts (run against the same data directory or database).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Agent processes that take tasks from a server.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Submit tasks and follow their output (with an API key in `ZEROSTATE_API_KEY`).
    #[command(subcommand)]
    Tasks(crate::client::TasksCommand),
}

/// Where the data lives; shared by `serve` and the operator commands.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Directory for the SQLite database and the token signing key.
    #[arg(long, env = "ZEROSTATE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database URL (`sqlite:…`, or `postgres://…` for several nodes sharing one
    /// database); default: SQLite in the data directory.
    #[arg(long, env = "ZEROSTATE_DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ZEROSTATE_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: String,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Redis URL linking several nodes; unset: single node.
    #[arg(long, env = "ZEROSTATE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Origins allowed besides the server's own, comma-separated (`https://app.example.com`).
    #[arg(long, env = "ZEROSTATE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Do not run the built-in agent.
    #[arg(long)]
    pub no_builtin_agent: bool,
    /// Whether to run the built-in agent (`ZEROSTATE_BUILTIN_AGENT=false` turns it off).
    #[arg(long, env = "ZEROSTATE_BUILTIN_AGENT", hide = true)]
    pub builtin_agent: Option<bool>,
    /// Log format.
    #[arg(long, env = "ZEROSTATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Token signing key (at least 32 characters); default: generated into the data directory.
    #[arg(long, env = "ZEROSTATE_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,
    /// Seconds a claimed task stays with its agent without a progress report before it
    /// goes back to the queue.
    #[arg(long, env = "ZEROSTATE_TASK_LEASE_S", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub task_lease_s: u64,
    /// Seconds without a claim or progress report after which an agent counts as offline.
    #[arg(long, env = "ZEROSTATE_AGENT_OFFLINE_AFTER_S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub agent_offline_after_s: u64,
    /// Most bytes of output one task may keep; appends beyond it get 413 `output_limit`.
    #[arg(long, env = "ZEROSTATE_TASK_OUTPUT_MAX_BYTES", default_value_t = crate::domain::DEFAULT_TASK_OUTPUT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub task_output_max_bytes: u64,
    /// Retries: the first retry of a failed attempt waits a random time up to this many
    /// milliseconds, each later one up to twice as long as the one before (at most
    /// 60 s): exponential backoff with full jitter.
    #[arg(long, env = "ZEROSTATE_RETRY_BACKOFF_BASE_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub retry_backoff_base_ms: u64,
    /// Real-time history: the newest messages always kept per user, for resume.
    #[arg(long, env = "ZEROSTATE_HISTORY_MAX_PER_USER", default_value_t = 1000)]
    pub history_max_per_user: u32,
    /// Real-time history: messages younger than this many seconds are always kept.
    #[arg(long, env = "ZEROSTATE_HISTORY_MAX_AGE_S", default_value_t = 600)]
    pub history_max_age_s: u64,
    /// Open TCP connections allowed from one client address; beyond, new ones are
    /// refused (0: no limit).
    #[arg(
        long,
        env = "ZEROSTATE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1000
    )]
    pub max_connections_per_address: u32,
    /// Sign-ups allowed per client address, as COUNT/WINDOW (`10/10m`, `100/1h`;
    /// 0: no limit); beyond, 429.
    #[arg(long, env = "ZEROSTATE_REGISTRATION_LIMIT", default_value = "10/10m",
          value_parser = crate::config::RateSetting::parse)]
    pub registration_limit: crate::config::RateSetting,
    /// Reverse proxies (addresses or CIDR networks, comma-separated) whose
    /// `X-Forwarded-For` is believed; from any other peer the header is ignored.
    #[arg(
        long,
        env = "ZEROSTATE_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR,…"
    )]
    pub trusted_proxies: Vec<String>,
}

impl ServeArgs {
    /// The built-in agent runs unless either switch turns it off.
    pub fn builtin_agent_enabled(&self) -> bool {
        !self.no_builtin_agent && self.builtin_agent.unwrap_or(true)
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an account.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[arg(long, default_value = "")]
        full_name: String,
        /// Make the account an admin.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Make an existing account an admin.
    Promote {
        email: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the reference agent: take tasks from the server and run CMD for each, the
    /// query on stdin; stdout lines `PROGRESS <n>` report progress, the rest of stdout
    /// is the result, a non-zero exit fails the task.
    Run(AgentRunArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AgentRunArgs {
    /// Server base URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "ZEROSTATE_SERVER")]
    pub server: String,
    /// The agent token (`zsa_…`) from registering the agent.
    #[arg(long, env = "ZEROSTATE_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Shell command run once per task (`sh -c CMD`).
    #[arg(long)]
    pub exec: String,
    /// Tasks run at the same time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, env = "ZEROSTATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}
