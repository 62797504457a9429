/*!
 * ZeroState real-time client (/static/js/websocket.js)
 *
 * Loaded as a classic script on every signed-in page, right after the status
 * indicator markup of the WebSocket integration guide:
 *
 *     <script src="/static/js/websocket.js"></script>
 *
 * What it does, following the guide and the public contract:
 *  - connects to /api/v1/ws/connect when the page loads and the user is signed in
 *    (never on /, /login.html or /signup.html);
 *  - sends {"type":"ping"} every 25 s;
 *  - reconnects with exponential backoff and full jitter (maxReconnectAttempts
 *    fast attempts, then slowly forever, with a Retry button in the indicator);
 *  - keeps the cursor of the last message handled (memory + sessionStorage) and
 *    resumes with ?since=<cursor>;
 *  - falls back to Server-Sent Events (/api/v1/events) when WebSockets are blocked;
 *  - shows the connection state in #ws-status and notifications as toasts;
 *  - patches every element [data-task-id] / [data-agent-id] on the page and
 *    dispatches DOM events (zs:task_update, zs:agent_update, zs:system, zs:reset,
 *    zs:<any type>) so that page modules can react.
 *
 * Adding a custom message handler (two ways):
 *  1. From any script, without touching this file:
 *         window.zsWebSocket.on('custom_event', (data, message) => { ... });
 *     or listen to the DOM event:
 *         document.addEventListener('zs:custom_event', (e) => use(e.detail));
 *  2. The guide's way: add a `case 'custom_event':` to handleMessage() below and
 *     a handleCustomEvent(data) method.
 *
 * All server text is rendered with textContent, never as HTML.
 */
(function () {
    'use strict';

    /** Pages that must never open a real-time connection (not signed in). */
    var PUBLIC_PATHS = ['/', '/index.html', '/login.html', '/signup.html'];
    var CURSOR_KEY_PREFIX = 'zs.ws.cursor';
    var NOTIFICATIONS_KEY = 'zs.notifications';
    var MAX_STORED_NOTIFICATIONS = 50;

    // ------------------------------------------------------------------ toasts
    /**
     * Shows a notification toast: an element `.toast.toast-<level>` with
     * role="status" inside #toasts (created if the page has none).
     * Shared with the page modules through window.zsToast.
     */
    function showToast(message, level, options) {
        options = options || {};
        var lvl = ['info', 'success', 'warning', 'error'].indexOf(level) >= 0 ? level : 'info';
        var container = document.getElementById('toasts');
        if (!container) {
            container = document.createElement('div');
            container.id = 'toasts';
            container.className = 'toasts';
            container.setAttribute('aria-live', 'polite');
            document.body.appendChild(container);
        }
        var toast = document.createElement('div');
        toast.className = 'toast toast-' + lvl;
        toast.setAttribute('role', 'status');
        if (options.category) toast.dataset.category = String(options.category);
        if (options.title) {
            var title = document.createElement('strong');
            title.className = 'toast-title';
            title.textContent = String(options.title);
            toast.appendChild(title);
        }
        var text = document.createElement('span');
        text.className = 'toast-message';
        text.textContent = String(message == null ? '' : message);
        toast.appendChild(text);
        var close = document.createElement('button');
        close.type = 'button';
        close.className = 'toast-close';
        close.setAttribute('aria-label', 'Dismiss notification');
        close.textContent = '×';
        close.addEventListener('click', function () { toast.remove(); });
        toast.appendChild(close);
        container.appendChild(toast);
        // Keep the stack short so a burst of updates cannot cover the page.
        while (container.children.length > 5) container.removeChild(container.firstChild);
        var ttl = options.duration || (lvl === 'error' || lvl === 'warning' ? 10000 : 7000);
        setTimeout(function () {
            toast.classList.add('toast-leaving');
            setTimeout(function () { toast.remove(); }, 300);
        }, ttl);
        return toast;
    }

    function readJSON(storage, key, fallback) {
        try {
            var raw = storage.getItem(key);
            return raw ? JSON.parse(raw) : fallback;
        } catch (e) {
            return fallback;
        }
    }

    function writeJSON(storage, key, value) {
        try { storage.setItem(key, JSON.stringify(value)); } catch (e) { /* private mode / full */ }
    }

    /** Full jitter: a random delay in [0, min(cap, base * 2^(attempt-1))]. */
    function fullJitter(attempt, base, cap) {
        return Math.floor(Math.random() * Math.min(cap, base * Math.pow(2, Math.max(0, attempt - 1))));
    }

    // ------------------------------------------------------------------ client
    function ZeroStateWebSocket(options) {
        options = options || {};
        this.path = options.path || '/api/v1/ws/connect';
        this.ssePath = options.ssePath || '/api/v1/events';
        this.maxReconnectAttempts = options.maxReconnectAttempts || 5;
        this.pingInterval = options.pingInterval || 25000;
        this.baseDelay = options.baseDelay || 1000;
        this.maxDelay = options.maxDelay || 16000;
        this.slowRetryDelay = options.slowRetryDelay || 30000;
        /** Consecutive WebSocket failures before any open that make us try SSE. */
        this.sseFallbackAfter = options.sseFallbackAfter || 3;
        /** While on SSE, how often to try the WebSocket again. */
        this.wsRetryWhileSse = options.wsRetryWhileSse || 60000;

        this.ws = null;
        this.es = null;
        this.transport = null;          // 'websocket' | 'sse' | null
        this.state = 'idle';            // idle|connecting|connected|reconnecting|disconnected
        this.reconnectAttempts = 0;
        this.failuresBeforeOpen = 0;
        this.everOpened = false;
        this.useSse = false;
        this.initialized = false;
        this.stopped = false;
        this.user = null;
        this.cursor = null;
        this.handlers = {};
        this.toasted = {};
        this.lastMessageAt = 0;
        this.timers = { ping: null, reconnect: null, wsProbe: null };
    }

    ZeroStateWebSocket.prototype.cursorKey = function () {
        return CURSOR_KEY_PREFIX + (this.user && this.user.id ? '.' + this.user.id : '');
    };

    ZeroStateWebSocket.prototype.loadCursor = function () {
        try { this.cursor = sessionStorage.getItem(this.cursorKey()) || null; } catch (e) { this.cursor = null; }
        return this.cursor;
    };

    ZeroStateWebSocket.prototype.saveCursor = function (cursor) {
        if (cursor === undefined || cursor === null || cursor === '') return;
        this.cursor = String(cursor);
        try { sessionStorage.setItem(this.cursorKey(), this.cursor); } catch (e) { /* ignore */ }
    };

    ZeroStateWebSocket.prototype.clearCursor = function () {
        this.cursor = null;
        try { sessionStorage.removeItem(this.cursorKey()); } catch (e) { /* ignore */ }
    };

    // ---------------------------------------------------------------- connect
    ZeroStateWebSocket.prototype.wsUrl = function () {
        var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
        return proto + '//' + location.host + this.path;
    };

    ZeroStateWebSocket.prototype.connect = function () {
        if (this.stopped) return;
        this.clearTimer('reconnect');
        if (this.useSse) return this.connectSse();
        if (this.ws && (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)) return;

        var base = this.wsUrl();
        var url = base + (this.cursor ? '?since=' + encodeURIComponent(this.cursor) : '');
        console.log('🔌 Connecting to WebSocket: ' + base);
        if (this.reconnectAttempts === 0 && this.state !== 'connected') this.setStatus('connecting');

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
        ws.onmessage = function (event) {
            self.onRawMessage(event.data);
        };
        ws.onerror = function () {
            // The close event that always follows carries the details.
        };
        ws.onclose = function (event) {
            self.onWsClosed(ws, event, opened);
        };
    };

    ZeroStateWebSocket.prototype.onOpen = function (transport) {
        this.transport = transport;
        this.everOpened = true;
        this.failuresBeforeOpen = 0;
        this.lastMessageAt = Date.now();
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
    };

    ZeroStateWebSocket.prototype.onWsClosed = function (ws, event, opened) {
        if (ws && this.ws !== ws) return; // a socket we already replaced
        this.ws = null;
        this.stopPing();
        var code = event && event.code;
        if (this.stopped) return;
        // The guide's exact line; the close code goes to a separate debug line.
        console.log('🔌 WebSocket disconnected');
        if (code) console.debug('WebSocket close code ' + code + (event.reason ? ': ' + event.reason : ''));
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
            var again = this.last4008 && now - this.last4008 < 2000;
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
    };

    /**
     * The WebSocket keeps failing before it opens. The failure may be the network
     * blocking WebSockets (then use SSE), an expired session (the upgrade got a 401:
     * sign in again) or the server being down (keep retrying).
     */
    ZeroStateWebSocket.prototype.considerSseFallback = function () {
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
    };

    ZeroStateWebSocket.prototype.scheduleReconnect = function (immediate) {
        if (this.stopped) return;
        this.clearTimer('reconnect');
        var self = this;
        var delay;
        if (this.reconnectAttempts < this.maxReconnectAttempts) {
            this.reconnectAttempts += 1;
            var n = this.reconnectAttempts;
            delay = immediate ? 0 : fullJitter(n, this.baseDelay, this.maxDelay);
            console.log('🔄 Reconnecting... (attempt ' + n + '/' + this.maxReconnectAttempts + ')');
            this.setStatus('reconnecting', { attempt: n });
        } else {
            // The fast attempts are spent: keep trying slowly (jittered so that a
            // restarted server is not hit by every client at the same second) and
            // let the user retry at once.
            delay = immediate ? 0 : Math.floor(this.slowRetryDelay * (0.5 + Math.random() * 0.5));
            this.setStatus('disconnected');
        }
        this.timers.reconnect = setTimeout(function () {
            self.timers.reconnect = null;
            self.connect();
        }, delay);
    };

    /** Reconnect now (Retry button, `online`, tab visible again). */
    ZeroStateWebSocket.prototype.reconnectNow = function (reason) {
        if (this.stopped || !this.user) return;
        if (this.state === 'connected') return;
        if (this.ws && this.ws.readyState === WebSocket.CONNECTING) return;
        if (reason) console.log('🔄 Reconnecting now (' + reason + ')');
        this.reconnectAttempts = 0;
        this.clearTimer('reconnect');
        if (this.useSse) {
            this.closeSse();
            this.connectSse();
        } else {
            this.setStatus('connecting');
            this.connect();
        }
    };

    // ------------------------------------------------------------------- SSE
    ZeroStateWebSocket.prototype.connectSse = function () {
        if (this.stopped || typeof EventSource === 'undefined') return this.scheduleReconnect();
        if (this.es) return;
        var url = this.ssePath + (this.cursor ? '?since=' + encodeURIComponent(this.cursor) : '');
        console.log('🔌 Connecting to event stream: ' + location.origin + this.ssePath);
        var es = new EventSource(url, { withCredentials: true });
        this.es = es;
        var self = this;
        es.onopen = function () {
            self.reconnectAttempts = 0;
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
            // The stream does not say why it failed: a 401 means sign in again.
            fetch('/api/v1/users/me', { credentials: 'same-origin', cache: 'no-store' })
                .then(function (res) {
                    if (res.status === 401) self.unauthorized(); else self.scheduleReconnect();
                })
                .catch(function () { self.scheduleReconnect(); });
        };
    };

    ZeroStateWebSocket.prototype.sseTypes = function () {
        // Not 'error' (EventSource uses it for connection errors) nor 'message'
        // (unnamed events, handled by onmessage).
        var types = ['task_update', 'agent_update', 'system', 'welcome', 'resumed', 'reset', 'pong'];
        Object.keys(this.handlers).forEach(function (t) {
            if (types.indexOf(t) < 0 && t !== 'error' && t !== 'message') types.push(t);
        });
        return types;
    };

    ZeroStateWebSocket.prototype.addSseListener = function (type) {
        if (!this.es || type === 'message' || type === 'error') return;
        var self = this;
        this.es.addEventListener(type, function (event) { self.onSseEvent(event); });
    };

    ZeroStateWebSocket.prototype.onSseEvent = function (event) {
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
    };

    ZeroStateWebSocket.prototype.closeSse = function () {
        if (this.es) {
            this.es.onerror = null;
            this.es.close();
            this.es = null;
        }
        this.clearTimer('wsProbe');
    };

    /** While on SSE, try the WebSocket again from time to time. */
    ZeroStateWebSocket.prototype.scheduleWsProbe = function () {
        var self = this;
        this.clearTimer('wsProbe');
        this.timers.wsProbe = setTimeout(function () {
            self.timers.wsProbe = null;
            if (self.stopped || !self.es) return;
            var base = self.wsUrl();
            var probe;
            try { probe = new WebSocket(base + (self.cursor ? '?since=' + encodeURIComponent(self.cursor) : '')); } catch (e) { return self.scheduleWsProbe(); }
            probe.onopen = function () {
                // The WebSocket works again: switch over. Messages that arrive on
                // the probe before the switch are handled too; the cursor dedups nothing
                // on the client, so close SSE first.
                self.closeSse();
                self.useSse = false;
                self.ws = probe;
                var opened = true;
                probe.onmessage = function (event) { self.onRawMessage(event.data); };
                probe.onclose = function (event) { self.onWsClosed(probe, event, opened); };
                self.onOpen('websocket');
            };
            probe.onclose = function () {
                if (self.ws !== probe) self.scheduleWsProbe();
            };
        }, this.wsRetryWhileSse);
    };

    // ------------------------------------------------------------------ ping
    ZeroStateWebSocket.prototype.startPing = function () {
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
    };

    ZeroStateWebSocket.prototype.stopPing = function () {
        if (this.timers.ping) clearInterval(this.timers.ping);
        this.timers.ping = null;
    };

    ZeroStateWebSocket.prototype.clearTimer = function (name) {
        if (this.timers[name]) clearTimeout(this.timers[name]);
        this.timers[name] = null;
    };

    /** Sends a JSON message on the WebSocket; returns false when not connected. */
    ZeroStateWebSocket.prototype.send = function (message) {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
        this.ws.send(JSON.stringify(message));
        return true;
    };

    // -------------------------------------------------------------- messages
    ZeroStateWebSocket.prototype.onRawMessage = function (raw) {
        var message;
        try {
            message = JSON.parse(raw);
        } catch (e) {
            console.warn('WebSocket: ignoring a message that is not JSON');
            return;
        }
        if (!message || typeof message !== 'object') return;
        this.dispatchMessage(message);
    };

    ZeroStateWebSocket.prototype.dispatchMessage = function (message) {
        this.lastMessageAt = Date.now();
        var data = message.data && typeof message.data === 'object' ? message.data : {};
        message.data = data;
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
        this.emit(message.type, data, message);
        this.emit('message', message, message);
    };

    /** The guide's dispatcher. Add a `case` here for a new message type. */
    ZeroStateWebSocket.prototype.handleMessage = function (message) {
        console.log('📨 WebSocket message:', message);

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
    };

    ZeroStateWebSocket.prototype.handleWelcome = function (data, message) {
        this.reconnectAttempts = 0;
        // A client that has seen nothing yet adopts the newest position, so that a
        // drop before its first message can still be resumed.
        if (!this.cursor) this.saveCursor(data.cursor || message.cursor);
    };

    ZeroStateWebSocket.prototype.handleReset = function (data) {
        console.log('♻️ History gap too large (' + (data.reason || 'reset') + '): reloading page data');
        // The gap cannot be replayed: our cursor is useless, the page reloads its
        // data (zs:reset). A cursor on the reset itself is adopted after this.
        this.clearCursor();
    };

    /** task_update: patch badges and progress on the page, notify on completion. */
    ZeroStateWebSocket.prototype.handleTaskUpdate = function (data) {
        console.log('📋 Task update:', data);
        if (!data || !data.task_id) return;
        var progress = typeof data.progress === 'number' ? Math.max(0, Math.min(100, data.progress)) : null;
        var rows = document.querySelectorAll('[data-task-id="' + cssEscape(String(data.task_id)) + '"]');
        var FINAL = ['completed', 'failed', 'canceled'];
        Array.prototype.forEach.call(rows, function (row) {
            // Finished is final: never let an older update move a row back.
            if (FINAL.indexOf(row.dataset.taskStatus) >= 0 && data.status && FINAL.indexOf(data.status) < 0) return;
            if (data.status) {
                row.dataset.taskStatus = data.status;
                Array.prototype.forEach.call(row.querySelectorAll('[data-status]'), function (badge) {
                    badge.dataset.status = data.status;
                    badge.textContent = data.status;
                });
            }
            if (progress !== null) {
                Array.prototype.forEach.call(row.querySelectorAll('progress, [data-progress]'), function (bar) {
                    bar.dataset.progress = String(progress);
                    if (bar.tagName === 'PROGRESS') {
                        bar.value = progress;
                        bar.textContent = progress + '%';
                    } else if (bar.classList.contains('progress-fill')) {
                        bar.style.width = progress + '%';
                    } else if (bar.classList.contains('progress-text')) {
                        bar.textContent = progress + '%';
                    }
                });
            }
        });

        if (data.status === 'completed' || data.status === 'failed') {
            var key = data.task_id + ':' + data.status;
            if (this.toasted[key]) return;
            this.toasted[key] = true;
            var query = shorten(data.query || data.task_id, 80);
            if (data.status === 'completed') {
                showToast(query, 'success', { title: 'Task completed' });
            } else {
                showToast(query + (data.error ? ' — ' + shorten(data.error, 160) : ''), 'error', { title: 'Task failed' });
            }
        }
    };

    /** agent_update: notify; the agents page reloads its list on zs:agent_update. */
    ZeroStateWebSocket.prototype.handleAgentUpdate = function (data) {
        console.log('🤖 Agent update:', data);
        if (!data) return;
        if (data.agent_id && data.status) {
            var els = document.querySelectorAll('[data-agent-id="' + cssEscape(String(data.agent_id)) + '"]');
            Array.prototype.forEach.call(els, function (el) {
                el.dataset.agentStatus = data.status;
                Array.prototype.forEach.call(el.querySelectorAll('[data-agent-status-badge]'), function (badge) {
                    badge.dataset.status = data.status;
                    badge.textContent = data.status;
                });
            });
        }
        var name = data.name || 'An agent';
        var text;
        if (data.action === 'registered') text = name + ' was registered';
        else if (data.action === 'deleted') text = name + ' was removed';
        else if (data.status) text = name + ' is ' + data.status;
        else text = name + ' was updated';
        showToast(text, 'info', { title: 'Agent', duration: 5000 });
    };

    /** system: a toast coloured by level; security alerts are kept for the api-keys page. */
    ZeroStateWebSocket.prototype.handleSystemMessage = function (data) {
        console.log('📢 System message:', data);
        if (!data) return;
        var level = ['info', 'success', 'warning', 'error'].indexOf(data.level) >= 0 ? data.level : 'info';
        var security = data.category === 'security';
        showToast(data.message, level, { title: security ? 'Security alert' : null, category: data.category });
        var list = readJSON(sessionStorage, NOTIFICATIONS_KEY, []);
        if (!Array.isArray(list)) list = [];
        list.unshift({
            message: String(data.message == null ? '' : data.message),
            level: level,
            category: data.category ? String(data.category) : null,
            at: new Date().toISOString()
        });
        writeJSON(sessionStorage, NOTIFICATIONS_KEY, list.slice(0, MAX_STORED_NOTIFICATIONS));
    };

    // --------------------------------------------------------- custom handlers
    /**
     * Registers fn(data, message) for a message type; returns a function that
     * removes it. Works for the built-in types too ('task_update', ...).
     */
    ZeroStateWebSocket.prototype.on = function (type, fn) {
        var self = this;
        (this.handlers[type] = this.handlers[type] || []).push(fn);
        // An SSE stream names its events: listen for the new type as well.
        if (this.es && this.sseTypes().indexOf(type) >= 0) this.addSseListener(type);
        return function () { self.off(type, fn); };
    };

    ZeroStateWebSocket.prototype.off = function (type, fn) {
        var list = this.handlers[type] || [];
        var i = list.indexOf(fn);
        if (i >= 0) list.splice(i, 1);
    };

    ZeroStateWebSocket.prototype.runCustomHandlers = function (message) {
        var list = (this.handlers[message.type] || []).slice();
        list.forEach(function (fn) {
            try { fn(message.data, message); } catch (err) { console.error('Handler for ' + message.type + ' failed:', err); }
        });
    };

    /** Dispatches `zs:<type>` on document (detail = data, plus the whole message). */
    ZeroStateWebSocket.prototype.emit = function (type, detail, message) {
        var event = new CustomEvent('zs:' + type, { detail: detail });
        if (message) event.message = message;
        document.dispatchEvent(event);
    };

    // ----------------------------------------------------------- status UI
    ZeroStateWebSocket.prototype.statusElements = function () {
        var root = document.getElementById('ws-status');
        if (!root) root = createIndicator();
        return {
            root: root,
            dot: document.getElementById('ws-status-indicator'),
            text: document.getElementById('ws-status-text')
        };
    };

    ZeroStateWebSocket.prototype.setStatus = function (state, info) {
        info = info || {};
        this.state = state;
        var els = this.statusElements();
        if (!els.dot || !els.text) return;
        var colours = ['bg-yellow-500', 'bg-green-500', 'bg-red-500', 'bg-orange-500', 'animate-pulse'];
        colours.forEach(function (c) { els.dot.classList.remove(c); });
        var text;
        var title = '';
        switch (state) {
            case 'connecting':
                els.dot.classList.add('bg-yellow-500', 'animate-pulse');
                text = 'Connecting...';
                break;
            case 'connected':
                els.dot.classList.add('bg-green-500');
                text = 'Connected';
                title = this.transport === 'sse'
                    ? 'Live updates over Server-Sent Events (WebSocket unavailable)'
                    : 'Live updates over WebSocket';
                break;
            case 'reconnecting':
                els.dot.classList.add('bg-orange-500', 'animate-pulse');
                text = 'Reconnecting... (' + info.attempt + '/' + this.maxReconnectAttempts + ')';
                break;
            default:
                els.dot.classList.add('bg-red-500');
                text = 'Disconnected';
                title = 'Live updates are paused; retrying in the background';
        }
        els.text.textContent = text;
        els.root.dataset.state = state;
        els.root.dataset.transport = this.transport || '';
        if (title) els.root.title = title; else els.root.removeAttribute('title');
        els.root.classList.remove('opacity-0');
        els.root.classList.add('opacity-100');
        els.root.setAttribute('role', 'status');
        els.root.setAttribute('aria-live', 'polite');

        var retry = document.getElementById('ws-status-retry');
        if (state === 'disconnected') {
            if (!retry) {
                retry = document.createElement('button');
                retry.type = 'button';
                retry.id = 'ws-status-retry';
                retry.className = 'ws-retry';
                retry.textContent = 'Retry';
                var self = this;
                retry.addEventListener('click', function () { self.reconnectNow('retry button'); });
                els.text.parentNode.appendChild(retry);
            }
        } else if (retry) {
            retry.remove();
        }
    };

    // ------------------------------------------------------------ lifecycle
    ZeroStateWebSocket.prototype.unauthorized = function () {
        this.stop();
        this.clearCursor();
        this.setStatus('disconnected');
        var next = location.pathname + location.search;
        location.replace('/login.html?next=' + encodeURIComponent(next));
    };

    /** Closes everything and stops reconnecting (sign-out, leaving the page). */
    ZeroStateWebSocket.prototype.stop = function () {
        this.stopped = true;
        this.state = 'stopped';
        this.stopPing();
        this.clearTimer('reconnect');
        this.closeSse();
        if (this.ws) {
            var ws = this.ws;
            this.ws = null;
            ws.onclose = null;
            try { ws.close(1000, 'client closing'); } catch (e) { /* ignore */ }
        }
    };

    /** Starts again after stop(), resuming from the kept cursor. */
    ZeroStateWebSocket.prototype.resume = function () {
        if (!this.user) return;
        this.stopped = false;
        this.reconnectNow('resume');
    };

    /** Alias kept for page code: stop() and forget the position (used at sign-out). */
    ZeroStateWebSocket.prototype.disconnect = function () {
        this.stop();
        this.clearCursor();
    };

    /** Starts the client for a signed-in user (object from GET /api/v1/users/me). */
    ZeroStateWebSocket.prototype.start = function (user) {
        var self = this;
        this.user = user;
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
        this.connect();
    };

    // --------------------------------------------------------------- helpers
    function shorten(text, n) {
        text = String(text);
        return text.length > n ? text.slice(0, n - 1) + '…' : text;
    }

    function cssEscape(value) {
        if (window.CSS && CSS.escape) return CSS.escape(value);
        return value.replace(/["\\]/g, '\\$&');
    }

    /** Builds the guide's indicator markup when a page forgot to include it. */
    function createIndicator() {
        var root = document.createElement('div');
        root.id = 'ws-status';
        root.className = 'fixed bottom-4 right-4 z-50 opacity-0 transition-opacity duration-300';
        var box = document.createElement('div');
        box.className = 'flex items-center gap-2 px-4 py-2 rounded-lg bg-surface-dark border border-gray-800 backdrop-blur-sm shadow-lg';
        var dot = document.createElement('span');
        dot.id = 'ws-status-indicator';
        dot.className = 'inline-block w-2 h-2 rounded-full bg-yellow-500 animate-pulse';
        var text = document.createElement('span');
        text.id = 'ws-status-text';
        text.className = 'text-sm text-gray-300';
        text.textContent = 'Connecting...';
        box.appendChild(dot);
        box.appendChild(text);
        root.appendChild(box);
        document.body.appendChild(root);
        return root;
    }

    /**
     * One request for "who am I", shared with the page modules (app.js reads
     * window.zsMePromise instead of asking again). Resolves to
     * {status, user} — status 0 when the server could not be reached.
     */
    function fetchMe() {
        return fetch('/api/v1/users/me', { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } })
            .then(function (res) {
                if (!res.ok) return { status: res.status, user: null };
                return res.json().then(function (body) {
                    return { status: res.status, user: (body && body.user) || body };
                });
            })
            .catch(function (err) { return { status: 0, user: null, error: err }; });
    }

    // ------------------------------------------------------------- bootstrap
    window.ZeroStateWebSocket = ZeroStateWebSocket;
    window.zsToast = window.zsToast || showToast;
    ZeroStateWebSocket.showToast = showToast;
    ZeroStateWebSocket.fetchMe = fetchMe;

    var path = location.pathname;
    if (PUBLIC_PATHS.indexOf(path) >= 0) {
        // Public pages never open a real-time connection, even if this script is included.
        return;
    }

    var client = new ZeroStateWebSocket();
    window.zsWebSocket = client;

    /**
     * Resolves once the server answered "who am I" with 200 or 401; while it
     * cannot be reached the indicator says so and the question is asked again
     * with backoff. Shared with the page modules (window.zsMePromise).
     */
    function waitForMe() {
        return new Promise(function (resolve) {
            var attempts = 0;
            function ask() {
                fetchMe().then(function (result) {
                    if (result.status === 200 || result.status === 401) return resolve(result);
                    attempts = Math.min(attempts + 1, client.maxReconnectAttempts);
                    client.setStatus(attempts >= client.maxReconnectAttempts ? 'disconnected' : 'reconnecting', { attempt: attempts });
                    setTimeout(ask, 1000 + fullJitter(attempts, client.baseDelay, client.maxDelay));
                });
            }
            ask();
        });
    }

    function boot() {
        client.setStatus('connecting');
        window.zsMePromise = waitForMe();
        window.zsMePromise.then(function (result) {
            if (result.status === 401 || !result.user) {
                client.unauthorized();
                return;
            }
            client.start(result.user);
        });
    }

    // The script sits at the end of <body>: the indicator markup is already parsed,
    // and booting now (not at DOMContentLoaded) lets the page modules, which run
    // later, share window.zsMePromise.
    if (document.body) {
        boot();
    } else {
        document.addEventListener('DOMContentLoaded', boot);
    }
})();
