/*!
 * ZeroState real-time client (/static/js/websocket.js)
 *
 * Loaded as a classic script on every signed-in page, right after the status
 * indicator markup of the WebSocket integration guide:
 *
 *     <script src="/static/js/websocket.js"></script>
 *
 * What it does, following the guide and the public contract:
 *  - connects to /api/v1/ws/connect when the page loads (never on /, /login.html or
 *    /signup.html; the server only serves the other pages to a signed-in user);
 *  - sends {"type":"ping"} every 25 s;
 *  - reconnects: the guide's five attempts with exponential backoff (jittered,
 *    spent within about 12 s), then a retry every 2-4 s, so a restarted server is
 *    live again within seconds of its return; only after 30 s down does it say
 *    "Disconnected" and retry every 15-30 s (a Retry button, `online` and the tab
 *    becoming visible retry at once); after 10 s down the page says live updates
 *    are paused;
 *  - keeps the cursor of the last message handled (memory + sessionStorage) and
 *    resumes with ?since=<cursor>;
 *  - falls back to Server-Sent Events (/api/v1/events) when WebSockets are blocked.
 *
 * This file is the connection and the guide's message switch, nothing else. Every
 * reaction of the page (the indicator, the paused banner, toasts, task rows, agent
 * cards, going to sign-in) lives once, in the ES modules (/static/js/realtime-ui.js
 * and the page modules), which listen to the DOM events dispatched here:
 *   zs:status       {state, attempt, maxAttempts, transport, paused}
 *   zs:connected    {transport}         zs:disconnected {code, reason}
 *   zs:unauthorized {}                  zs:<type>       data of each message
 *   zs:message      the whole message
 *
 * Adding a custom message handler (two ways):
 *  1. From any script, without touching this file:
 *         window.zsWebSocket.on('custom_event', (data, message) => { ... });
 *     or listen to the DOM event:
 *         document.addEventListener('zs:custom_event', (e) => use(e.detail));
 *  2. The guide's way: add a `case 'custom_event':` to handleMessage() below and
 *     a handleCustomEvent(data) method.
 */
(function () {
    'use strict';

    /** Pages that must never open a real-time connection (not signed in). */
    var PUBLIC_PATHS = ['/', '/index.html', '/login.html', '/signup.html'];
    var CURSOR_KEY = 'zs.ws.cursor';

    /** Equal jitter: a random delay in [d/2, d], d = min(cap, base * 2^(attempt-1)). */
    function backoff(attempt, base, cap) {
        var d = Math.min(cap, base * Math.pow(2, Math.max(0, attempt - 1)));
        return Math.floor(d / 2 + Math.random() * d / 2);
    }

    function between(min, max) {
        return Math.floor(min + Math.random() * (max - min));
    }

    class ZeroStateWebSocket {
        constructor(options) {
            options = options || {};
            this.path = options.path || '/api/v1/ws/connect';
            this.ssePath = options.ssePath || '/api/v1/events';
            /** The guide's fast attempts (its console lines count them). */
            this.maxReconnectAttempts = options.maxReconnectAttempts || 5;
            this.pingInterval = options.pingInterval || 25000;
            /** First backoff step and its cap: five attempts take 6 to 12 s. */
            this.baseDelay = options.baseDelay || 500;
            this.maxDelay = options.maxDelay || 4000;
            /** After the fast attempts: a retry every 2-4 s while down less than 30 s
             *  (an ordinary restart is back within seconds of its return)... */
            this.quietRetry = options.quietRetry || [2000, 4000];
            /** ...then "Disconnected" and a retry every 15-30 s (jittered, so a restarted
             *  server is not hit by every client at once), with a Retry button. */
            this.slowRetry = options.slowRetry || [15000, 30000];
            this.disconnectedAfterMs = options.disconnectedAfterMs || 30000;
            /** Down this long: the live data may be stale, say so (a quiet banner). */
            this.pausedAfterMs = options.pausedAfterMs || 10000;
            /** Consecutive WebSocket failures before any open that make us try SSE. */
            this.sseFallbackAfter = options.sseFallbackAfter || 3;
            /** While on SSE, how often to try the WebSocket again. */
            this.wsRetryWhileSse = options.wsRetryWhileSse || 60000;

            this.ws = null;
            this.es = null;
            this.transport = null;      // 'websocket' | 'sse' | null
            this.state = 'idle';        // idle|connecting|connected|reconnecting|disconnected|stopped
            this.reconnectAttempts = 0;
            this.failuresBeforeOpen = 0;
            this.everOpened = false;
            this.useSse = false;
            this.initialized = false;
            this.stopped = false;
            this.signedOut = false;
            this.downSince = 0;
            this.paused = false;
            this.cursor = null;
            this.handlers = {};
            this.lastMessageAt = 0;
            this.last4008 = 0;
            this.timers = { ping: null, reconnect: null, wsProbe: null, paused: null, disconnected: null };
        }

        // ------------------------------------------------------------ cursor
        loadCursor() {
            try { this.cursor = sessionStorage.getItem(CURSOR_KEY) || null; } catch (e) { this.cursor = null; }
            return this.cursor;
        }

        saveCursor(cursor) {
            if (cursor === undefined || cursor === null || cursor === '') return;
            this.cursor = String(cursor);
            try { sessionStorage.setItem(CURSOR_KEY, this.cursor); } catch (e) { /* private mode */ }
        }

        clearCursor() {
            this.cursor = null;
            try { sessionStorage.removeItem(CURSOR_KEY); } catch (e) { /* ignore */ }
        }

        // ----------------------------------------------------------- connect
        wsUrl() {
            var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
            return proto + '//' + location.host + this.path;
        }

        connect() {
            if (this.stopped) return;
            this.clearTimer('reconnect');
            if (this.useSse) return this.connectSse();
            if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) return;

            var base = this.wsUrl();
            var url = base + (this.cursor ? '?since=' + encodeURIComponent(this.cursor) : '');
            console.log('🔌 Connecting to WebSocket: ' + base);
            if (this.reconnectAttempts === 0 && this.state !== 'connected' && !this.downSince) this.setStatus('connecting');

            var ws;
            try {
                ws = new WebSocket(url);
            } catch (err) {
                console.error('WebSocket error:', err);
                this.onWsClosed(null, { code: 1006, reason: String(err) }, false);
                return;
            }
            this.ws = ws;
            var self = this;
            var opened = false;
            ws.onopen = function () {
                opened = true;
                self.onOpen('websocket');
            };
            ws.onmessage = function (event) { self.onRawMessage(event.data); };
            ws.onerror = function () { /* the close event that follows carries the details */ };
            ws.onclose = function (event) { self.onWsClosed(ws, event, opened); };
        }

        onOpen(transport) {
            this.transport = transport;
            this.everOpened = true;
            this.failuresBeforeOpen = 0;
            this.reconnectAttempts = 0;
            this.lastMessageAt = Date.now();
            this.markUp();
            if (transport === 'websocket') {
                console.log('✅ WebSocket connected');
                this.startPing();
                if (this.es) this.closeSse();
                this.useSse = false;
                this.clearTimer('wsProbe');
            } else {
                console.log('✅ Event stream connected (Server-Sent Events fallback)');
            }
            this.setStatus('connected');
            if (!this.initialized) {
                this.initialized = true;
                console.log('🚀 WebSocket client initialized');
            }
            this.emit('connected', { transport: transport });
        }

        onWsClosed(ws, event, opened) {
            if (ws && this.ws !== ws) return; // a socket we already replaced
            this.ws = null;
            this.stopPing();
            var code = event && event.code;
            if (this.stopped) return;
            // The guide's exact line; the close code goes to a separate debug line.
            console.log('🔌 WebSocket disconnected');
            if (code) console.debug('WebSocket close code ' + code + (event.reason ? ': ' + event.reason : ''));
            this.markDown();
            this.emit('disconnected', { code: code, reason: event && event.reason });

            if (code === 4001) {
                // Unauthorized, revoked or expired: sign in again, no retry.
                this.unauthorized();
                return;
            }
            if (code === 4008) {
                // Too slow to keep up: resume at once from our cursor (but not in a
                // tight loop if the server keeps dropping us).
                var now = Date.now();
                var again = now - this.last4008 < 2000;
                this.last4008 = now;
                if (again) this.scheduleReconnect(); else this.connect();
                return;
            }
            if (!opened) this.failuresBeforeOpen += 1;
            if (!opened && this.transport !== 'sse' && this.failuresBeforeOpen >= this.sseFallbackAfter) {
                this.considerSseFallback();
                return;
            }
            this.scheduleReconnect();
        }

        /**
         * The WebSocket keeps failing before it opens. The failure may be the network
         * blocking WebSockets (then use SSE), an expired session (the upgrade got a 401:
         * sign in again) or the server being down (keep retrying).
         */
        considerSseFallback() {
            var self = this;
            fetch('/api/v1/users/me', { credentials: 'same-origin', cache: 'no-store' })
                .then(function (res) {
                    if (res.status === 401) return self.unauthorized();
                    if (res.ok && !self.everOpened) {
                        console.warn('WebSocket unavailable, falling back to Server-Sent Events');
                        self.useSse = true;
                        self.failuresBeforeOpen = 0;
                        self.connectSse();
                        return;
                    }
                    if (res.ok) self.failuresBeforeOpen = 0;
                    self.scheduleReconnect();
                })
                .catch(function () { self.scheduleReconnect(); });
        }

        /** The connection is gone: start the clocks of the paused banner and of "Disconnected". */
        markDown() {
            if (this.downSince) return;
            this.downSince = Date.now();
            var self = this;
            this.clearTimer('paused');
            this.clearTimer('disconnected');
            this.timers.paused = setTimeout(function () {
                self.timers.paused = null;
                self.paused = true;
                self.setStatus(self.state, { attempt: self.reconnectAttempts });
            }, this.pausedAfterMs);
            this.timers.disconnected = setTimeout(function () {
                self.timers.disconnected = null;
                if (self.state !== 'reconnecting') return;
                self.setStatus('disconnected');
                // Not an ordinary restart: from now on retry slowly (a pending quick
                // retry is replaced; one in flight schedules the next when it fails).
                if (self.timers.reconnect) self.scheduleReconnect();
            }, this.disconnectedAfterMs);
        }

        markUp() {
            this.downSince = 0;
            this.paused = false;
            this.clearTimer('paused');
            this.clearTimer('disconnected');
        }

        scheduleReconnect(immediate) {
            if (this.stopped) return;
            this.clearTimer('reconnect');
            if (!this.downSince) this.markDown();
            var self = this;
            var down = Date.now() - this.downSince;
            var delay;
            if (this.reconnectAttempts < this.maxReconnectAttempts) {
                this.reconnectAttempts += 1;
                var n = this.reconnectAttempts;
                delay = immediate ? 0 : backoff(n, this.baseDelay, this.maxDelay);
                console.log('🔄 Reconnecting... (attempt ' + n + '/' + this.maxReconnectAttempts + ')');
                this.setStatus(down >= this.disconnectedAfterMs ? 'disconnected' : 'reconnecting', { attempt: n });
            } else {
                // The fast attempts are spent: keep trying, every few seconds for a
                // while (an ordinary restart), then slowly; the user can retry at once.
                var range = down < this.disconnectedAfterMs ? this.quietRetry : this.slowRetry;
                delay = immediate ? 0 : between(range[0], range[1]);
                this.setStatus(down >= this.disconnectedAfterMs ? 'disconnected' : 'reconnecting', { attempt: this.reconnectAttempts });
            }
            this.timers.reconnect = setTimeout(function () {
                self.timers.reconnect = null;
                self.connect();
            }, delay);
        }

        /** Reconnect now (Retry button, `online`, tab visible again). */
        reconnectNow(reason) {
            if (this.stopped) return;
            if (this.state === 'connected') return;
            if (this.ws && this.ws.readyState === WebSocket.CONNECTING) return;
            if (reason) console.log('🔄 Reconnecting now (' + reason + ')');
            this.reconnectAttempts = 0;
            this.clearTimer('reconnect');
            if (this.useSse) {
                this.closeSse();
                this.connectSse();
            } else {
                if (!this.downSince) this.setStatus('connecting');
                this.connect();
            }
        }

        // --------------------------------------------------------------- SSE
        connectSse() {
            if (this.stopped || typeof EventSource === 'undefined') return this.scheduleReconnect();
            if (this.es) return;
            var url = this.ssePath + (this.cursor ? '?since=' + encodeURIComponent(this.cursor) : '');
            console.log('🔌 Connecting to event stream: ' + location.origin + this.ssePath);
            var es = new EventSource(url, { withCredentials: true });
            this.es = es;
            var self = this;
            es.onopen = function () {
                self.onOpen('sse');
                self.scheduleWsProbe();
            };
            // Unnamed events arrive here; named ones (event: <type>) need listeners.
            es.onmessage = function (event) { self.onSseEvent(event); };
            this.sseTypes().forEach(function (type) { self.addSseListener(type); });
            es.onerror = function () {
                if (self.es !== es) return;
                // Take reconnection into our own hands so that ?since= carries the
                // newest cursor and the attempt counter is shown.
                self.closeSse();
                self.transport = null;
                if (self.stopped) return;
                console.log('🔌 WebSocket disconnected (event stream closed)');
                self.markDown();
                // The stream does not say why it failed: a 401 means sign in again.
                fetch('/api/v1/users/me', { credentials: 'same-origin', cache: 'no-store' })
                    .then(function (res) {
                        if (res.status === 401) self.unauthorized(); else self.scheduleReconnect();
                    })
                    .catch(function () { self.scheduleReconnect(); });
            };
        }

        sseTypes() {
            // Not 'error' (EventSource uses it for connection errors) nor 'message'
            // (unnamed events, handled by onmessage).
            var types = ['task_update', 'agent_update', 'system', 'task_output', 'welcome', 'resumed', 'reset', 'pong'];
            Object.keys(this.handlers).forEach(function (t) {
                if (types.indexOf(t) < 0 && t !== 'error' && t !== 'message') types.push(t);
            });
            return types;
        }

        addSseListener(type) {
            if (!this.es || type === 'message' || type === 'error') return;
            var self = this;
            this.es.addEventListener(type, function (event) { self.onSseEvent(event); });
        }

        onSseEvent(event) {
            if (typeof event.data !== 'string') return;
            var parsed;
            try { parsed = JSON.parse(event.data); } catch (e) { parsed = { message: event.data }; }
            var message;
            if (parsed && typeof parsed === 'object' && typeof parsed.type === 'string' && 'data' in parsed) {
                message = parsed;
            } else {
                message = { type: event.type === 'message' ? (parsed && parsed.type) || 'message' : event.type, data: parsed };
            }
            if (!message.cursor && event.lastEventId) message.cursor = event.lastEventId;
            this.dispatchMessage(message);
        }

        closeSse() {
            if (this.es) {
                this.es.onerror = null;
                this.es.close();
                this.es = null;
            }
            this.clearTimer('wsProbe');
        }

        /** While on SSE, try the WebSocket again from time to time. */
        scheduleWsProbe() {
            var self = this;
            this.clearTimer('wsProbe');
            this.timers.wsProbe = setTimeout(function () {
                self.timers.wsProbe = null;
                if (self.stopped || !self.es) return;
                var probe;
                try { probe = new WebSocket(self.wsUrl() + (self.cursor ? '?since=' + encodeURIComponent(self.cursor) : '')); } catch (e) { return self.scheduleWsProbe(); }
                probe.onopen = function () {
                    // The WebSocket works again: switch over (SSE closed first, so that
                    // no message is handled twice).
                    self.closeSse();
                    self.useSse = false;
                    self.ws = probe;
                    probe.onmessage = function (event) { self.onRawMessage(event.data); };
                    probe.onclose = function (event) { self.onWsClosed(probe, event, true); };
                    self.onOpen('websocket');
                };
                probe.onclose = function () {
                    if (self.ws !== probe) self.scheduleWsProbe();
                };
            }, this.wsRetryWhileSse);
        }

        // -------------------------------------------------------------- ping
        startPing() {
            var self = this;
            this.stopPing();
            this.timers.ping = setInterval(function () {
                var ws = self.ws;
                if (!ws || ws.readyState !== WebSocket.OPEN) return;
                // Nothing at all (not even a pong) for well over two ping periods:
                // the connection is dead without a close frame. Drop it and reconnect.
                if (Date.now() - self.lastMessageAt > self.pingInterval * 2.5) {
                    ws.onclose = null;
                    try { ws.close(4000, 'ping timeout'); } catch (e) { /* ignore */ }
                    self.onWsClosed(ws, { code: 1006, reason: 'ping timeout' }, true);
                    return;
                }
                self.send({ type: 'ping' });
            }, this.pingInterval);
        }

        stopPing() {
            if (this.timers.ping) clearInterval(this.timers.ping);
            this.timers.ping = null;
        }

        clearTimer(name) {
            if (this.timers[name]) clearTimeout(this.timers[name]);
            this.timers[name] = null;
        }

        /** Sends a JSON message on the WebSocket; returns false when not connected. */
        send(message) {
            if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
            this.ws.send(JSON.stringify(message));
            return true;
        }

        // ---------------------------------------------------------- messages
        onRawMessage(raw) {
            var message;
            try {
                message = JSON.parse(raw);
            } catch (e) {
                console.warn('WebSocket: ignoring a message that is not JSON');
                return;
            }
            if (!message || typeof message !== 'object') return;
            this.dispatchMessage(message);
        }

        dispatchMessage(message) {
            this.lastMessageAt = Date.now();
            message.data = message.data && typeof message.data === 'object' ? message.data : {};
            try {
                this.handleMessage(message);
            } catch (err) {
                console.error('WebSocket handler failed:', err);
            }
            // Remember where we are, after the message was handled.
            // (welcome only moves it when we had none: handleWelcome.)
            if (message.cursor && ['welcome', 'pong', 'error'].indexOf(message.type) < 0) {
                this.saveCursor(message.cursor);
            }
            this.runCustomHandlers(message);
            this.emit(message.type, message.data, message);
            this.emit('message', message, message);
        }

        /** The guide's dispatcher. Add a `case` here for a new message type. */
        handleMessage(message) {
            // Output chunks can come by the thousand: they are not logged one by one.
            if (message.type !== 'task_output') console.log('📨 WebSocket message:', message);

            switch (message.type) {
                case 'task_update':
                    this.handleTaskUpdate(message.data);
                    break;
                case 'agent_update':
                    this.handleAgentUpdate(message.data);
                    break;
                case 'system':
                    this.handleSystemMessage(message.data);
                    break;
                case 'task_output':
                    // Applied by the task detail (in seq order, gaps fetched).
                    break;
                // Control messages of the contract.
                case 'welcome':
                    this.handleWelcome(message.data, message);
                    break;
                case 'pong':
                    break;
                case 'resumed':
                    console.log('↩️ Resumed: ' + (message.data.replayed || 0) + ' missed message(s) replayed');
                    break;
                case 'reset':
                    this.handleReset(message.data);
                    break;
                case 'error':
                    console.warn('WebSocket error message:', message.data.code, message.data.message);
                    break;
                // case 'custom_event':  // ADD YOUR CUSTOM HANDLER
                //     this.handleCustomEvent(message.data);
                //     break;
                default:
                    if (!this.handlers[message.type] || this.handlers[message.type].length === 0) {
                        console.log('Unknown message type:', message.type);
                    }
            }
        }

        handleWelcome(data, message) {
            // A client that has seen nothing yet adopts the newest position, so that a
            // drop before its first message can still be resumed.
            if (!this.cursor) this.saveCursor(data.cursor || message.cursor);
        }

        handleReset(data) {
            console.log('♻️ History gap too large (' + (data.reason || 'reset') + '): reloading page data');
            // The gap cannot be replayed: our cursor is useless, the page reloads its
            // data (zs:reset). A cursor on the reset itself is adopted after this.
            this.clearCursor();
        }

        /** task_update: the rows, the detail and the toast react to zs:task_update. */
        handleTaskUpdate(data) {
            console.log('📋 Task update:', data);
        }

        /** agent_update: the agent cards and the toast react to zs:agent_update. */
        handleAgentUpdate(data) {
            console.log('🤖 Agent update:', data);
        }

        /** system: the toast and the notification lists react to zs:system. */
        handleSystemMessage(data) {
            console.log('📢 System message:', data);
        }

        // --------------------------------------------------- custom handlers
        /**
         * Registers fn(data, message) for a message type; returns a function that
         * removes it. Works for the built-in types too ('task_update', ...).
         */
        on(type, fn) {
            var self = this;
            (this.handlers[type] = this.handlers[type] || []).push(fn);
            // An SSE stream names its events: listen for the new type as well.
            if (this.es && ['task_update', 'agent_update', 'system', 'task_output', 'welcome', 'resumed', 'reset', 'pong'].indexOf(type) < 0) {
                this.addSseListener(type);
            }
            return function () { self.off(type, fn); };
        }

        off(type, fn) {
            var list = this.handlers[type] || [];
            var i = list.indexOf(fn);
            if (i >= 0) list.splice(i, 1);
        }

        runCustomHandlers(message) {
            (this.handlers[message.type] || []).slice().forEach(function (fn) {
                try { fn(message.data, message); } catch (err) { console.error('Handler for ' + message.type + ' failed:', err); }
            });
        }

        /** Dispatches `zs:<type>` on document (detail = data; event.message = the whole message). */
        emit(type, detail, message) {
            var event = new CustomEvent('zs:' + type, { detail: detail });
            if (message) event.message = message;
            document.dispatchEvent(event);
        }

        // -------------------------------------------------------------- state
        /** Moves the state machine and tells the page (zs:status); the indicator is drawn by realtime-ui.js. */
        setStatus(state, info) {
            info = info || {};
            this.state = state;
            this.emit('status', this.status(info.attempt));
        }

        /** The connection as the page shows it. */
        status(attempt) {
            return {
                state: this.state,
                attempt: attempt || this.reconnectAttempts,
                maxAttempts: this.maxReconnectAttempts,
                transport: this.transport,
                paused: this.paused && this.state !== 'connected'
            };
        }

        // ---------------------------------------------------------- lifecycle
        /** The session is gone: stop, forget the position, let the page send the user to sign in. */
        unauthorized() {
            this.signedOut = true;
            this.stop();
            this.clearCursor();
            this.emit('unauthorized', {});
        }

        /** Closes everything and stops reconnecting (sign-out, leaving the page). */
        stop() {
            this.stopped = true;
            this.state = 'stopped';
            this.stopPing();
            this.clearTimer('reconnect');
            this.clearTimer('paused');
            this.clearTimer('disconnected');
            this.closeSse();
            if (this.ws) {
                var ws = this.ws;
                this.ws = null;
                ws.onclose = null;
                try { ws.close(1000, 'client closing'); } catch (e) { /* ignore */ }
            }
        }

        /** Starts again after stop(), resuming from the kept cursor. */
        resume() {
            this.stopped = false;
            this.reconnectNow('resume');
        }

        /** stop() and forget the position (used at sign-out). */
        disconnect() {
            this.stop();
            this.clearCursor();
        }

        /** Starts the client: connects and watches the network and the tab. */
        start() {
            var self = this;
            this.stopped = false;
            this.loadCursor();
            window.addEventListener('online', function () { self.reconnectNow('network back online'); });
            document.addEventListener('visibilitychange', function () {
                if (document.visibilityState !== 'visible') return;
                if (self.state === 'connected') {
                    if (self.transport === 'websocket') self.send({ type: 'ping' });
                } else {
                    self.reconnectNow('tab visible');
                }
            });
            window.addEventListener('pagehide', function (event) {
                if (!event.persisted) self.stop();
            });
            window.addEventListener('pageshow', function (event) {
                if (event.persisted) self.resume();
            });
            this.setStatus('connecting');
            this.connect();
        }
    }

    // ------------------------------------------------------------ bootstrap
    window.ZeroStateWebSocket = ZeroStateWebSocket;
    if (PUBLIC_PATHS.indexOf(location.pathname) >= 0) {
        // Public pages never open a real-time connection, even if this script is included.
        return;
    }
    var client = new ZeroStateWebSocket();
    window.zsWebSocket = client;
    // The script sits at the end of <body>, after the indicator markup.
    client.start();
    // The page's reactions (the indicator first) are one ES module; a page that only
    // pastes the guide's snippet gets them too. The pages' own modules import the same
    // module (one instance per page), so nothing is wired twice.
    import('/static/js/realtime-ui.js')
        .then(function (ui) { ui.startRealtimeUi(); })
        .catch(function (err) { console.error('Real-time UI failed to load:', err); });
})();
