//! Tenancy: private and shared agents (contract v2, Agents). A private agent runs only
//! its owner's tasks and only its owner and the admins see it (lists, reads,
//! `agent_update`); an admin can share an agent, which then runs and is seen by everyone.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Registers an agent with an explicit `shared` flag (the plain helper leaves it out).
async fn register_shared(app: &TestApp, admin: &TestUser, name: &str, caps: &[&str]) -> Value {
    let (agent, _) = app
        .register_agent_as(
            admin,
            json!({ "name": name, "capabilities": caps, "shared": true }),
        )
        .await;
    assert_eq!(agent["shared"], true);
    agent
}

fn id_of(agent: &Value) -> String {
    agent["id"].as_str().expect("agent id").to_owned()
}

/// Claims without waiting; the claimed task's id, or `None` on 204.
async fn claim_now(app: &TestApp, token: &str) -> Option<String> {
    let (status, body) = app.runtime(token, "/claim", json!({ "wait_s": 0 })).await;
    match status {
        StatusCode::NO_CONTENT => None,
        StatusCode::OK => Some(body["task"]["id"].as_str().expect("task id").to_owned()),
        other => panic!("claim answered {other}: {body}"),
    }
}

/// Sets `shared` as the admin.
async fn set_shared(app: &TestApp, admin: &TestUser, agent: &str, shared: bool) {
    let (status, body) = app
        .put(
            &format!("/api/v1/agents/{agent}"),
            Some(&admin.token),
            json!({ "shared": shared }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["shared"], shared);
}

fn agent_ids(list: &Value) -> Vec<String> {
    list["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(id_of)
        .collect()
}

#[tokio::test]
async fn no_task_ever_runs_on_another_users_agent() {
    const PER_USER: usize = 40;
    let app = Arc::new(spawn_app().await);
    let _admin = app.new_user().await;
    let (alice, bob) = (app.new_user().await, app.new_user().await);

    // Two agents each, all offering the same capability.
    let mut agents = Vec::new(); // (owner id, agent id, token)
    for (user, tag) in [(&alice, "alice"), (&bob, "bob")] {
        for n in 0..2 {
            let (agent, token) = app
                .register_agent(user, &format!("{tag}-{n}"), &["finance"])
                .await;
            agents.push((user.id.clone(), id_of(&agent), token));
        }
    }
    let mut owner_of_task = HashMap::new();
    for i in 0..PER_USER {
        for user in [&alice, &bob] {
            let task = app
                .submit(
                    user,
                    json!({ "query": format!("CONFIDENTIAL {} #{i}", user.email), "capability": "finance" }),
                )
                .await;
            owner_of_task.insert(task["id"].as_str().unwrap().to_owned(), user.id.clone());
        }
    }
    let owner_of_task = Arc::new(owner_of_task);

    // The four agents claim concurrently (long polls) and complete what they get, until
    // every task is done.
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (owner, agent, token) in agents.clone() {
        let (app, done, owners) = (app.clone(), done.clone(), owner_of_task.clone());
        workers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut ran = Vec::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < 2 * PER_USER {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "tasks did not all run"
                );
                let (status, body) = app.runtime(&token, "/claim", json!({ "wait_s": 1 })).await;
                if status == StatusCode::NO_CONTENT {
                    continue;
                }
                assert_eq!(status, StatusCode::OK, "{body}");
                let task = body["task"]["id"].as_str().unwrap().to_owned();
                assert_eq!(
                    owners.get(&task),
                    Some(&owner),
                    "agent {agent} of {owner} got another user's task {body}"
                );
                let (status, body) = app
                    .runtime(
                        &token,
                        &format!("/tasks/{task}/complete"),
                        json!({ "result": { "by": agent } }),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ran.push(task);
            }
            ran
        }));
    }
    let mut ran = Vec::new();
    for worker in workers {
        ran.extend(worker.await.expect("worker"));
    }
    assert_eq!(ran.len(), 2 * PER_USER);
    assert_eq!(ran.iter().collect::<HashSet<_>>().len(), 2 * PER_USER);

    // The stored record agrees: every task completed on one of its owner's agents.
    let agents_of: HashMap<String, HashSet<String>> =
        agents
            .iter()
            .fold(HashMap::new(), |mut m, (owner, agent, _)| {
                m.entry(owner.clone()).or_default().insert(agent.clone());
                m
            });
    for (task, owner) in owner_of_task.iter() {
        let user = if *owner == alice.id { &alice } else { &bob };
        let task = app.task(user, task).await;
        assert_eq!(task["status"], "completed");
        let agent = task["agent_id"].as_str().unwrap();
        assert!(agents_of[owner].contains(agent), "{task}");
        assert_eq!(task["result"]["by"], agent);
    }
    // Each user's agents ran work, and only their owner's.
    for (owner, agent, _) in &agents {
        let user = if *owner == alice.id { &alice } else { &bob };
        let (_, read) = app
            .get(&format!("/api/v1/agents/{agent}"), Some(&user.token))
            .await;
        assert_eq!(read["current_tasks"], 0);
    }
}

#[tokio::test]
async fn a_shared_agent_runs_every_users_tasks_and_everyone_sees_it() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let (alice, bob) = (app.new_user().await, app.new_user().await);
    let (gpu, token) = app.register_agent(&bob, "bob's gpu", &["render"]).await;
    let gpu = id_of(&gpu);
    let path = format!("/api/v1/agents/{gpu}");

    // Private: alice neither sees it nor can submit to it, and it does not run her task.
    assert_eq!(
        app.get(&path, Some(&alice.token)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = app
        .post(
            "/api/v1/tasks/submit",
            Some(&alice.token),
            json!({ "query": "q", "capability": "render", "agent_id": gpu }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "agent_not_found");
    let alices = app
        .submit(
            &alice,
            json!({ "query": "alice's", "capability": "render" }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(claim_now(&app, &token).await, None);

    // Shared by the admin: it runs alice's task, then bob's.
    set_shared(&app, &admin, &gpu, true).await;
    let bobs = app
        .submit(&bob, json!({ "query": "bob's", "capability": "render" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(claim_now(&app, &token).await, Some(alices.clone()));
    assert_eq!(claim_now(&app, &token).await, Some(bobs));
    let task = app.task(&alice, &alices).await;
    assert_eq!(
        (task["status"].as_str(), task["agent_id"].as_str()),
        (Some("running"), Some(gpu.as_str()))
    );

    // Alice sees it now, in reads and lists, and may submit to it, but not change it.
    let (status, read) = app.get(&path, Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["shared"], true);
    assert_eq!(read["current_tasks"], 2);
    let (_, list) = app.get("/api/v1/agents", Some(&alice.token)).await;
    assert_eq!(agent_ids(&list), [gpu.as_str()]);
    assert_eq!(
        app.put(&path, Some(&alice.token), json!({ "name": "mine now" }))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.delete(&path, Some(&alice.token)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post(&format!("{path}/token"), Some(&alice.token), json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Its owner may change it, but not unshare it: that is the admin's.
    let (status, body) = app
        .put(&path, Some(&bob.token), json!({ "shared": false }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .put(
            &path,
            Some(&bob.token),
            json!({ "name": "shared gpu", "shared": true }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "sending the same value is no change: {body}"
    );

    // A task pinned to it while shared does not run on it once it is private again:
    // the claim itself checks.
    let pinned = app
        .submit(
            &alice,
            json!({ "query": "pinned", "capability": "render", "agent_id": gpu }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    set_shared(&app, &admin, &gpu, false).await;
    assert_eq!(claim_now(&app, &token).await, None);
    assert_eq!(
        app.get(&path, Some(&alice.token)).await.0,
        StatusCode::NOT_FOUND
    );
    set_shared(&app, &admin, &gpu, true).await;
    assert_eq!(claim_now(&app, &token).await, Some(pinned));
}

#[tokio::test]
async fn agent_update_reaches_only_those_who_can_see_the_agent() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let (alice, bob) = (app.new_user().await, app.new_user().await);
    let (mut admin_ws, _) = app.ws(&admin.token).await;
    let (mut alice_ws, _) = app.ws(&alice.token).await;
    let (mut bob_ws, _) = app.ws(&bob.token).await;

    let (agent, token) = app.register_agent(&alice, "private", &["general"]).await;
    let id = id_of(&agent);
    let of_agent = |d: &Value| d["agent_id"] == id.as_str();
    app.runtime(&token, "/claim", json!({})).await; // online
    app.put(
        &format!("/api/v1/agents/{id}"),
        Some(&alice.token),
        json!({ "name": "renamed" }),
    )
    .await;
    // The owner and the admin hear all three: registered, online, renamed.
    for ws in [&mut alice_ws, &mut admin_ws] {
        let registered = ws.next_of("agent_update", of_agent).await;
        assert_eq!(
            registered,
            json!({ "agent_id": id, "name": "private", "action": "registered",
                    "status": "offline", "shared": false })
        );
        let online = ws.next_of("agent_update", of_agent).await;
        assert_eq!(
            (online["action"].as_str(), online["status"].as_str()),
            (Some("updated"), Some("online"))
        );
        let renamed = ws.next_of("agent_update", of_agent).await;
        assert_eq!(renamed["name"], "renamed");
    }

    // Bob hears none of it. A shared agent's registration, which everyone hears, comes
    // after them in every connection's order: everything before it in Bob's stream is
    // all he was sent.
    let marker = id_of(&register_shared(&app, &admin, "marker", &["general"]).await);
    let seen_by_bob = read_until_agent(&mut bob_ws, &marker).await;
    assert!(
        !seen_by_bob.iter().any(|m| m.to_string().contains(&id)),
        "bob heard of alice's private agent: {seen_by_bob:?}"
    );
    alice_ws
        .next_of("agent_update", |d| d["agent_id"] == marker.as_str())
        .await;

    // Shared, everyone hears it; unshared, everyone hears that too (their lists drop it);
    // after that, Bob hears nothing of it again.
    set_shared(&app, &admin, &id, true).await;
    let shared = bob_ws.next_of("agent_update", of_agent).await;
    assert_eq!(
        (shared["action"].as_str(), shared["shared"].as_bool()),
        (Some("updated"), Some(true))
    );
    set_shared(&app, &admin, &id, false).await;
    let unshared = bob_ws.next_of("agent_update", of_agent).await;
    assert_eq!(unshared["shared"], false);
    app.delete(&format!("/api/v1/agents/{id}"), Some(&alice.token))
        .await;
    let deleted = alice_ws
        .next_of("agent_update", |d| of_agent(d) && d["action"] == "deleted")
        .await;
    assert_eq!(deleted["shared"], false);
    admin_ws
        .next_of("agent_update", |d| of_agent(d) && d["action"] == "deleted")
        .await;
    let marker = id_of(&register_shared(&app, &admin, "marker 2", &["general"]).await);
    let seen_by_bob = read_until_agent(&mut bob_ws, &marker).await;
    assert!(
        !seen_by_bob.iter().any(|m| m.to_string().contains(&id)),
        "bob heard of the deletion of a private agent: {seen_by_bob:?}"
    );
}

/// Reads messages until the `agent_update` of `agent`; returns the ones before it.
async fn read_until_agent(ws: &mut WsClient, agent: &str) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let message = ws.next().await;
        if message["type"] == "agent_update" && message["data"]["agent_id"] == agent {
            return before;
        }
        before.push(message);
    }
}

#[tokio::test]
async fn a_new_token_replaces_the_old_one_at_once() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let (owner, other) = (app.new_user().await, app.new_user().await);
    let (agent, old) = app.register_agent(&owner, "rotating", &["general"]).await;
    let path = format!("/api/v1/agents/{}/token", id_of(&agent));
    assert_eq!(
        app.runtime(&old, "/claim", json!({})).await.0,
        StatusCode::NO_CONTENT
    );

    let (status, body) = app.post(&path, Some(&owner.token), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["agent_token"]);
    let new = body["agent_token"].as_str().unwrap().to_owned();
    assert!(new.starts_with("zsa_") && new != old);
    assert_eq!(
        app.runtime(&old, "/claim", json!({})).await.0,
        StatusCode::UNAUTHORIZED,
        "the old token stops working at once"
    );
    assert_eq!(
        app.runtime(&new, "/claim", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    // The new token runs tasks.
    let task = app.submit_query(&owner, "after rotation").await;
    assert_eq!(claim_now(&app, &new).await, Some(task));

    // An admin may rotate it too; another user does not see it; nobody else may.
    let (status, body) = app.post(&path, Some(&admin.token), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        app.runtime(&new, "/claim", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.post(&path, Some(&other.token), json!({})).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(&path, None, json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    let missing = format!("/api/v1/agents/{}/token", uuid::Uuid::new_v4());
    assert_eq!(
        app.post(&missing, Some(&admin.token), json!({})).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn deleting_an_agent_puts_its_running_tasks_back_in_the_queue_at_once() {
    // A long lease: the task must come back because of the delete, not lease expiry.
    let app = TestApp::with_lease(300).await;
    let owner = app.new_user().await;
    let (doomed, doomed_token) = app.register_agent(&owner, "doomed", &["general"]).await;
    let (_, spare_token) = app.register_agent(&owner, "spare", &["general"]).await;
    let doomed = id_of(&doomed);
    let running = app.submit_query(&owner, "running").await;
    assert_eq!(claim_now(&app, &doomed_token).await, Some(running.clone()));
    let pinned = app
        .submit(&owner, json!({ "query": "pinned", "agent_id": doomed }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws, _) = app.ws(&owner.token).await;

    let (status, _) = app
        .delete(&format!("/api/v1/agents/{doomed}"), Some(&owner.token))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // At once: the answer to the DELETE already finds it queued, and it is announced.
    let task = app.task(&owner, &running).await;
    assert_eq!(
        (
            task["status"].as_str(),
            task["agent_id"].is_null(),
            task["attempts"].as_u64()
        ),
        (Some("queued"), true, Some(0)),
        "requeued without counting the attempt: {task}"
    );
    let update = ws
        .next_of("task_update", |d| d["task_id"] == running.as_str())
        .await;
    assert_eq!(
        (update["status"].as_str(), update["agent_id"].is_null()),
        (Some("queued"), true)
    );
    // The deleted agent can report nothing more on it.
    assert_eq!(
        app.runtime(
            &doomed_token,
            &format!("/tasks/{running}/complete"),
            json!({ "result": 1 })
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    // Another of the owner's agents takes both (the pinned one was unpinned: its agent
    // is gone) and completes them.
    let mut claimed = vec![
        claim_now(&app, &spare_token).await.expect("first"),
        claim_now(&app, &spare_token).await.expect("second"),
    ];
    claimed.sort();
    let mut expected = vec![running.clone(), pinned];
    expected.sort();
    assert_eq!(claimed, expected);
    let (status, _) = app
        .runtime(
            &spare_token,
            &format!("/tasks/{running}/complete"),
            json!({ "result": "ok" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let task = app.wait_status(&owner, &running, "completed").await;
    assert_eq!(task["attempts"], 1);
}

#[tokio::test]
async fn who_may_see_share_and_list_which_agents() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let (alice, bob) = (app.new_user().await, app.new_user().await);
    let (alices, _) = app.register_agent(&alice, "alice's", &["general"]).await;
    let (bobs, _) = app
        .register_agent(&bob, "bob's", &["general", "code"])
        .await;
    let (admins, _) = app.register_agent(&admin, "admin's", &["general"]).await;
    let shared = register_shared(&app, &admin, "shared", &["code"]).await;
    let (alices, bobs, admins, shared) =
        (id_of(&alices), id_of(&bobs), id_of(&admins), id_of(&shared));

    // Only an admin registers a shared agent; a user may say `shared: false`.
    let (status, body) = app
        .post(
            "/api/v1/agents/register",
            Some(&alice.token),
            json!({ "name": "sneaky", "capabilities": ["general"], "shared": true }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .post(
            "/api/v1/agents/register",
            Some(&alice.token),
            json!({ "name": "plain", "capabilities": ["text"], "shared": false }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let plain = id_of(&body["agent"]);

    // Lists: own and shared, newest first; admins see all with ?all=true only.
    let (_, list) = app.get("/api/v1/agents", Some(&alice.token)).await;
    assert_eq!(
        agent_ids(&list),
        [plain.as_str(), shared.as_str(), alices.as_str()]
    );
    let (_, list) = app.get("/api/v1/agents/search?q=s", Some(&bob.token)).await;
    assert_eq!(agent_ids(&list), [shared.as_str(), bobs.as_str()]);
    let (_, list) = app
        .get("/api/v1/agents?capability=code", Some(&alice.token))
        .await;
    assert_eq!(agent_ids(&list), [shared.as_str()]);
    let (status, body) = app.get("/api/v1/agents?all=true", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (_, list) = app.get("/api/v1/agents", Some(&admin.token)).await;
    assert_eq!(agent_ids(&list), [shared.as_str(), admins.as_str()]);
    let (_, list) = app.get("/api/v1/agents?all=true", Some(&admin.token)).await;
    assert_eq!(
        agent_ids(&list),
        [
            plain.as_str(),
            shared.as_str(),
            admins.as_str(),
            bobs.as_str(),
            alices.as_str()
        ]
    );
    // Paging over the visible ones only.
    let (_, first) = app.get("/api/v1/agents?limit=2", Some(&alice.token)).await;
    assert_eq!(agent_ids(&first), [plain.as_str(), shared.as_str()]);
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let (_, second) = app
        .get(
            &format!("/api/v1/agents?limit=2&cursor={cursor}"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(agent_ids(&second), [alices.as_str()]);
    assert!(second["next_cursor"].is_null());
    let (status, _) = app.get("/api/v1/agents?limit=0", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Reads: another user's private agent is 404 everywhere; admins read any.
    for (who, agent, expected) in [
        (&alice, &bobs, StatusCode::NOT_FOUND),
        (&alice, &admins, StatusCode::NOT_FOUND),
        (&bob, &alices, StatusCode::NOT_FOUND),
        (&bob, &shared, StatusCode::OK),
        (&admin, &alices, StatusCode::OK),
        (&admin, &bobs, StatusCode::OK),
    ] {
        let path = format!("/api/v1/agents/{agent}");
        assert_eq!(
            app.get(&path, Some(&who.token)).await.0,
            expected,
            "GET {path}"
        );
        if expected == StatusCode::NOT_FOUND {
            let (status, body) = app
                .put(&path, Some(&who.token), json!({ "name": "x" }))
                .await;
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::NOT_FOUND, Some("not_found"))
            );
            assert_eq!(
                app.delete(&path, Some(&who.token)).await.0,
                StatusCode::NOT_FOUND
            );
        }
    }

    // Sharing is the admin's: the owner's `shared: true` is 403, the admin's works.
    let path = format!("/api/v1/agents/{alices}");
    let (status, body) = app
        .put(&path, Some(&alice.token), json!({ "shared": true }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        app.get(&path, Some(&bob.token)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = app
        .put(&path, Some(&alice.token), json!({ "shared": false }))
        .await;
    assert_eq!(status, StatusCode::OK, "no change is fine: {body}");
    set_shared(&app, &admin, &alices, true).await;
    assert_eq!(app.get(&path, Some(&bob.token)).await.0, StatusCode::OK);

    // Submitting to an agent: only one whose tasks it may run; else agent_not_found.
    for agent in [
        bobs.clone(),
        admins.clone(),
        uuid::Uuid::new_v4().to_string(),
    ] {
        let (status, body) = app
            .post(
                "/api/v1/tasks/submit",
                Some(&alice.token),
                json!({ "query": "q", "agent_id": agent }),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("agent_not_found")),
            "{body}"
        );
    }
    for agent in [&alices, &plain] {
        let capability = if *agent == plain { "text" } else { "general" };
        app.submit(
            &alice,
            json!({ "query": "q", "agent_id": agent, "capability": capability }),
        )
        .await;
    }
    app.submit(&bob, json!({ "query": "q", "agent_id": alices }))
        .await;
}

#[tokio::test]
async fn the_builtin_agent_is_shared_and_stays_the_servers() {
    let app = spawn_app_with(AppOptions {
        builtin_agent: true,
        ..Default::default()
    })
    .await;
    let admin = app.new_user().await;
    let user = app.new_user().await;
    let (_, list) = app.get("/api/v1/agents", Some(&user.token)).await;
    let builtin = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["shared"] == true)
        .unwrap_or_else(|| panic!("a new user sees the shared built-in agent: {list}"))
        .clone();
    let path = format!("/api/v1/agents/{}", id_of(&builtin));
    // A user cannot change it; the admin cannot make it private or take its token.
    assert_eq!(
        app.put(&path, Some(&user.token), json!({ "name": "x" }))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = app
        .put(&path, Some(&admin.token), json!({ "shared": false }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = app
        .post(&format!("{path}/token"), Some(&admin.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // And it runs the user's task.
    let task = app
        .submit_query(&user, "The built-in agent runs every user's tasks.")
        .await;
    app.wait_status(&user, &task, "completed").await;
}
