//! Transports: the WebSocket and Server-Sent Events faces of the real-time hub. Each
//! drives one `realtime::Connection` per client: it writes the connection's frames,
//! reads what the client sends (WebSocket only), keeps the link alive and closes it with
//! the code the hub or the client's behaviour calls for. They know nothing of users or
//! routing; authentication happens in `http::realtime` before a transport takes over.

pub mod sse;
pub mod websocket;
