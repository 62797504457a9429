//! What each subcommand does, given its parsed arguments.

use crate::app::{open_store, Application};
use crate::auth::password;
use crate::cli::{AgentCommand, AgentRunArgs, Command, ServeArgs, UsersCommand};
use crate::domain::{Email, FullName, Role};
use crate::store::NewUser;
use std::io::Write;

/// Runs one parsed command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Users(cmd) => users(cmd).await,
        Command::Agent(AgentCommand::Run(args)) => agent_run(args).await,
        Command::Tasks(cmd) => crate::client::run(cmd).await,
    }
}

/// The reference agent: runs until SIGINT/SIGTERM, or until the server refuses its token.
async fn agent_run(args: AgentRunArgs) -> anyhow::Result<()> {
    use crate::agents::{runner, shell::ShellExecutor};
    crate::telemetry::init_logging(args.log_format);
    let shutdown = crate::shutdown::Shutdown::new();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::wait_for_signal().await;
        tracing::info!("stopping: no new tasks; running ones are handed back");
        stopping.trigger();
    });
    let config = runner::RunnerConfig {
        server: args.server,
        token: args.token,
        concurrency: usize::from(args.concurrency),
    };
    tracing::info!(server = %config.server, concurrency = config.concurrency, "agent starting");
    runner::run(
        config,
        std::sync::Arc::new(ShellExecutor::new(args.exec)),
        shutdown,
    )
    .await
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging(args.log_format);
    let settings = crate::config::Settings::try_from(args)?;
    crate::app::raise_open_files_limit();
    crate::auth::password::tune_allocator();
    let metrics = crate::telemetry::init_metrics()?;
    let app = Application::build(settings, metrics).await?;
    let addr = app.local_addr()?;
    // One machine-readable line on stdout, for scripts and tests that bind port 0.
    println!("zerostate listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(%addr, "listening");
    app.run().await
}

async fn users(cmd: UsersCommand) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::Create {
            email,
            password,
            full_name,
            admin,
            storage,
        } => {
            let store = open_store(&storage.into()).await?;
            let new = NewUser {
                email: Email::parse(&email)?,
                full_name: FullName::parse(&full_name)?,
                password_hash: password::Hasher::new()
                    .hash(password::parse_new(password)?)
                    .await?,
                role: Some(if admin { Role::Admin } else { Role::User }),
            };
            let user = store.create_user(new).await?;
            println!(
                "created {} ({}) with role {}",
                user.email,
                user.id,
                user.role.as_str()
            );
        }
        UsersCommand::Promote { email, storage } => {
            let store = open_store(&storage.into()).await?;
            let user = store.set_role(&Email::parse(&email)?, Role::Admin).await?;
            println!("{} is now admin", user.email);
        }
    }
    Ok(())
}
