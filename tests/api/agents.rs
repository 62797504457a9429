//! The agent registry: register, list, search and filter, read, update and delete with
//! owner-or-admin checks, and `agent_update` messages. Who sees which agent (private and
//! shared agents) is tested in `tenancy`.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn register_shows_the_token_once_and_the_agent_in_the_contract_shape() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (status, body) = app
        .post(
            "/api/v1/agents/register",
            Some(&user.token),
            json!({ "name": "Summarizer", "description": "Summarizes text", "capabilities": ["text", "general"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["agent_token"].as_str().unwrap();
    assert!(token.starts_with("zsa_") && token.len() > 40);
    let agent = &body["agent"];
    let mut keys: Vec<&str> = agent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "capabilities",
            "created_at",
            "current_tasks",
            "description",
            "id",
            "last_seen_at",
            "name",
            "owner_id",
            "shared",
            "status",
            "tasks_completed",
            "tasks_failed",
            "updated_at"
        ]
    );
    assert_eq!(agent["owner_id"], user.id.as_str());
    assert_eq!(agent["capabilities"], json!(["text", "general"]));
    assert_eq!(agent["status"], "offline");
    assert_eq!(agent["shared"], false, "agents are private by default");
    assert_eq!(
        (
            agent["current_tasks"].as_i64(),
            agent["tasks_completed"].as_i64(),
            agent["tasks_failed"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert!(agent["last_seen_at"].is_null());

    let id = agent["id"].as_str().unwrap();
    let (status, read) = app
        .get(&format!("/api/v1/agents/{id}"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&read, agent);
    assert!(
        !read.to_string().contains(token),
        "the token is shown only once"
    );

    // A claim is a sign of life: the agent goes online.
    app.runtime(token, "/claim", json!({ "wait_s": 0 })).await;
    let (_, read) = app
        .get(&format!("/api/v1/agents/{id}"), Some(&user.token))
        .await;
    assert_eq!(read["status"], "online");
    assert!(read["last_seen_at"].is_string());
}

#[tokio::test]
async fn invalid_registrations_are_400_and_anonymous_ones_401() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for body in [
        json!({ "name": "" }),
        json!({ "name": "x".repeat(101), "capabilities": ["general"] }),
        json!({ "name": "ok", "capabilities": [] }),
        json!({ "name": "ok", "capabilities": ["bad cap"] }),
        json!({ "capabilities": ["general"] }),
    ] {
        let (status, answer) = app
            .post("/api/v1/agents/register", Some(&user.token), body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
    }
    let (status, _) = app
        .post(
            "/api/v1/agents/register",
            None,
            json!({ "name": "x", "capabilities": ["general"] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get("/api/v1/agents", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn owners_list_search_and_filter_their_agents_newest_first() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let reader = owner.clone();
    let (a, _) = app
        .register_agent(&owner, "Alpha translator", &["translate"])
        .await;
    let (b, _) = app
        .register_agent(&owner, "Beta coder", &["code", "general"])
        .await;
    let (c, _) = app.register_agent(&owner, "Gamma", &["general"]).await;

    let (_, all) = app.get("/api/v1/agents", Some(&reader.token)).await;
    let ids: Vec<&str> = all["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            c["id"].as_str().unwrap(),
            b["id"].as_str().unwrap(),
            a["id"].as_str().unwrap()
        ]
    );
    assert!(all["next_cursor"].is_null());

    let (_, found) = app
        .get("/api/v1/agents/search?q=TRANSLATOR", Some(&reader.token))
        .await;
    assert_eq!(found["agents"].as_array().unwrap().len(), 1);
    assert_eq!(found["agents"][0]["id"], a["id"]);
    let (_, found) = app
        .get("/api/v1/agents?q=test%20agent", Some(&reader.token))
        .await;
    assert_eq!(
        found["agents"].as_array().unwrap().len(),
        3,
        "description matches too"
    );
    let (_, general) = app
        .get("/api/v1/agents?capability=general", Some(&reader.token))
        .await;
    assert_eq!(general["agents"].as_array().unwrap().len(), 2);
    let (_, both) = app
        .get(
            "/api/v1/agents?capability=general&q=beta",
            Some(&reader.token),
        )
        .await;
    assert_eq!(both["agents"].as_array().unwrap().len(), 1);

    let (_, first) = app.get("/api/v1/agents?limit=2", Some(&reader.token)).await;
    assert_eq!(first["agents"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("more pages");
    let (_, second) = app
        .get(
            &format!("/api/v1/agents?limit=2&cursor={cursor}"),
            Some(&reader.token),
        )
        .await;
    assert_eq!(second["agents"].as_array().unwrap().len(), 1);
    assert_eq!(second["agents"][0]["id"], a["id"]);
    assert!(second["next_cursor"].is_null());
}

#[tokio::test]
async fn only_the_owner_or_an_admin_can_change_an_agent() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let owner = app.new_user().await;
    let other = app.new_user().await;
    let (agent, _) = app.register_agent(&owner, "mine", &["general"]).await;
    let path = format!("/api/v1/agents/{}", agent["id"].as_str().unwrap());

    // Another user does not even see a private agent: 404, as if it did not exist.
    let (status, body) = app
        .put(&path, Some(&other.token), json!({ "name": "stolen" }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        app.delete(&path, Some(&other.token)).await.0,
        StatusCode::NOT_FOUND
    );

    let (status, updated) = app
        .put(
            &path,
            Some(&owner.token),
            json!({ "description": "new words", "capabilities": ["text"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "mine");
    assert_eq!(updated["description"], "new words");
    assert_eq!(updated["capabilities"], json!(["text"]));
    let (status, updated) = app
        .put(
            &path,
            Some(&admin.token),
            json!({ "name": "renamed by admin" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["name"], "renamed by admin");
    assert_eq!(
        app.put(&path, Some(&owner.token), json!({ "capabilities": [] }))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    let missing = format!("/api/v1/agents/{}", uuid::Uuid::new_v4());
    assert_eq!(
        app.get(&missing, Some(&owner.token)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.put(&missing, Some(&admin.token), json!({ "name": "x" }))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&missing, Some(&admin.token)).await.0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        app.delete(&path, Some(&owner.token)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&path, Some(&owner.token)).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_deleted_agents_token_stops_working() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (agent, token) = app
        .register_agent(&owner, "short-lived", &["general"])
        .await;
    assert_eq!(
        app.runtime(&token, "/claim", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    let path = format!("/api/v1/agents/{}", agent["id"].as_str().unwrap());
    assert_eq!(
        app.delete(&path, Some(&owner.token)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.runtime(&token, "/claim", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_owner_hears_every_change_of_an_agent() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (mut ws, _) = app.ws(&owner.token).await;
    let (agent, token) = app.register_agent(&owner, "announced", &["general"]).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let of_agent = |d: &serde_json::Value| d["agent_id"] == id.as_str();

    let registered = ws.next_of("agent_update", of_agent).await;
    assert_eq!(
        registered,
        json!({ "agent_id": id, "name": "announced", "action": "registered", "status": "offline", "shared": false })
    );
    app.runtime(&token, "/claim", json!({})).await;
    let online = ws.next_of("agent_update", of_agent).await;
    assert_eq!(
        (online["action"].as_str(), online["status"].as_str()),
        (Some("updated"), Some("online"))
    );
    app.put(
        &format!("/api/v1/agents/{id}"),
        Some(&owner.token),
        json!({ "name": "renamed" }),
    )
    .await;
    let renamed = ws.next_of("agent_update", of_agent).await;
    assert_eq!(
        (renamed["action"].as_str(), renamed["name"].as_str()),
        (Some("updated"), Some("renamed"))
    );
    app.delete(&format!("/api/v1/agents/{id}"), Some(&owner.token))
        .await;
    let deleted = ws.next_of("agent_update", of_agent).await;
    assert_eq!(deleted["action"], "deleted");
}

#[tokio::test]
async fn a_silent_agent_goes_offline_and_its_owner_hears_it() {
    let app = spawn_app_with(AppOptions {
        extra_args: vec!["--agent-offline-after-s".into(), "2".into()],
        ..Default::default()
    })
    .await;
    let owner = app.new_user().await;
    let (mut ws, _) = app.ws(&owner.token).await;
    let (agent, token) = app.register_agent(&owner, "quiet", &["general"]).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let of_agent = |d: &serde_json::Value| d["agent_id"] == id.as_str();
    app.runtime(&token, "/claim", json!({})).await;
    let online = ws
        .next_of("agent_update", |d| of_agent(d) && d["status"] == "online")
        .await;
    assert_eq!(online["action"], "updated");
    // No more claims: after the silence the sweeper turns it offline, live and in the API.
    let offline = ws
        .next_of("agent_update", |d| of_agent(d) && d["status"] == "offline")
        .await;
    assert_eq!(offline["action"], "updated");
    let (_, read) = app
        .get(&format!("/api/v1/agents/{id}"), Some(&owner.token))
        .await;
    assert_eq!(read["status"], "offline");
    // A claim brings it back.
    app.runtime(&token, "/claim", json!({})).await;
    let (_, read) = app
        .get(&format!("/api/v1/agents/{id}"), Some(&owner.token))
        .await;
    assert_eq!(read["status"], "online");
}

// Agent tokens are verified from memory once checked (a busy agent's calls cost no
// token lookup); these tests hold the cache to the promises the database gave.

/// Waits until the agent reads `status` in the API.
async fn wait_agent_status(app: &TestApp, user: &TestUser, id: &str, status: &str) {
    eventually(TASK_WAIT, Duration::from_millis(20), async || {
        let (_, read) = app
            .get(&format!("/api/v1/agents/{id}"), Some(&user.token))
            .await;
        if read["status"] == status {
            Ok(())
        } else {
            Err(format!("agent never became {status}: {read}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_remembered_token_is_refused_at_once_after_rotation_on_every_runtime_call() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (agent, old) = app
        .register_agent(&owner, "remembered", &["remembered"])
        .await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let task = app
        .submit(&owner, json!({ "query": "q", "capability": "remembered" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Several calls with the token, so it is remembered.
    let (status, claimed) = app.runtime(&old, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["task"]["id"], task.as_str());
    let progress = format!("/tasks/{task}/progress");
    for step in [10, 20] {
        assert_eq!(
            app.runtime(&old, &progress, json!({ "progress": step }))
                .await
                .0,
            StatusCode::OK
        );
    }

    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{id}/token"),
            Some(&owner.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let new = body["agent_token"].as_str().unwrap().to_owned();
    for (path, body) in [
        (progress.as_str(), json!({ "progress": 30 })),
        (&format!("/tasks/{task}/output"), json!({ "text": "x" })),
        (&format!("/tasks/{task}/complete"), json!({ "result": 1 })),
        ("/claim", json!({})),
        ("/stop", json!({})),
    ] {
        assert_eq!(
            app.runtime(&old, path, body).await.0,
            StatusCode::UNAUTHORIZED,
            "{path} with the rotated token"
        );
    }
    // The task is untouched, and the new token carries on with it.
    assert_eq!(app.task(&owner, &task).await["progress"], 20);
    assert_eq!(
        app.runtime(
            &new,
            &format!("/tasks/{task}/complete"),
            json!({ "result": 1 })
        )
        .await
        .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_claim_waiting_when_its_token_is_rotated_is_handed_no_task() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (agent, old) = app.register_agent(&owner, "waiting", &["waiting"]).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let waiting = app.runtime(&old, "/claim", json!({ "wait_s": 20 }));
    let meanwhile = async {
        // The claim came in (it brought the agent online) and waits for work.
        wait_agent_status(&app, &owner, &id, "online").await;
        let (status, body) = app
            .post(
                &format!("/api/v1/agents/{id}/token"),
                Some(&owner.token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let task = app
            .submit(&owner, json!({ "query": "q", "capability": "waiting" }))
            .await;
        (
            body["agent_token"].as_str().unwrap().to_owned(),
            task["id"].as_str().unwrap().to_owned(),
        )
    };
    let ((status, body), (new, task)) = tokio::join!(waiting, meanwhile);
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the waiting claim must end without the task: {body}"
    );
    let read = app.task(&owner, &task).await;
    assert_eq!(read["status"], "queued", "{read}");
    let (status, claimed) = app.runtime(&new, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["task"]["id"], task.as_str());
}

#[tokio::test]
async fn a_claim_waiting_when_its_agent_is_deleted_is_handed_no_task() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let (agent, token) = app.register_agent(&owner, "doomed", &["doomed"]).await;
    let (_, spare) = app.register_agent(&owner, "spare", &["doomed"]).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    // Remembered first.
    assert_eq!(
        app.runtime(&token, "/claim", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    let waiting = app.runtime(&token, "/claim", json!({ "wait_s": 20 }));
    let meanwhile = async {
        // The first claim brought it online; give the second one a moment to wait.
        wait_agent_status(&app, &owner, &id, "online").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            app.delete(&format!("/api/v1/agents/{id}"), Some(&owner.token))
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        app.submit(&owner, json!({ "query": "q", "capability": "doomed" }))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ((status, body), task) = tokio::join!(waiting, meanwhile);
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(
        app.runtime(&token, "/claim", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.task(&owner, &task).await["status"], "queued");
    let (status, claimed) = app.runtime(&spare, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["task"]["id"], task.as_str());
}

#[tokio::test]
async fn an_agent_that_says_it_stops_is_offline_at_once_and_its_waiting_claim_ends() {
    // A silence window far beyond the test: only the stop can turn it offline.
    let app = spawn_app_with(AppOptions {
        extra_args: vec!["--agent-offline-after-s".into(), "600".into()],
        ..Default::default()
    })
    .await;
    let owner = app.new_user().await;
    let (mut ws, _) = app.ws(&owner.token).await;
    let (agent, token) = app.register_agent(&owner, "leaving", &["leaving"]).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let of_agent = |d: &serde_json::Value| d["agent_id"] == id.as_str();
    let waiting = app.runtime(&token, "/claim", json!({ "wait_s": 20 }));
    let meanwhile = async {
        wait_agent_status(&app, &owner, &id, "online").await;
        assert_eq!(
            app.runtime(&token, "/stop", json!({})).await.0,
            StatusCode::NO_CONTENT
        );
        app.submit(&owner, json!({ "query": "q", "capability": "leaving" }))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ((status, body), task) = tokio::join!(waiting, meanwhile);
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    ws.next_of("agent_update", |d| of_agent(d) && d["status"] == "online")
        .await;
    let offline = ws
        .next_of("agent_update", |d| of_agent(d) && d["status"] == "offline")
        .await;
    assert_eq!(offline["action"], "updated");
    let (_, read) = app
        .get(&format!("/api/v1/agents/{id}"), Some(&owner.token))
        .await;
    assert_eq!(read["status"], "offline");
    assert_eq!(app.task(&owner, &task).await["status"], "queued");
    // The token still works: the next call brings the agent back, with the task.
    let (status, claimed) = app.runtime(&token, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["task"]["id"], task.as_str());
    ws.next_of("agent_update", |d| of_agent(d) && d["status"] == "online")
        .await;
}
