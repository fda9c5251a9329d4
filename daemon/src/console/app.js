// The Cairn web console: four pages over the node's local API (cluster, document, an author's
// chain, one event). Plain JS, no framework. Text is only ever set with textContent, never
// parsed as HTML, so nothing a peer wrote can become markup.
'use strict';

/** How often the cluster page reloads, in milliseconds. */
const CLUSTER_REFRESH_MS = 2000;
/** The most keys the document page shows (one page of `GET /v1/keys`). */
const DOCUMENT_KEYS_MAX = 200;
/** Events of an author's chain shown per page. */
const CHAIN_PAGE_EVENTS = 50;
/** How long the document page waits before it opens a watch stream again after one ended. */
const WATCH_RETRY_MS = 2000;
/** The longest line of the watch stream the page takes (a change is far smaller). */
const WATCH_LINE_CHARS_MAX = 1 << 20;
/** Where the token is kept: sessionStorage is per origin (so per port) and per tab. */
const TOKEN_KEY = 'cairn-console-token';

// The token lives in memory and in sessionStorage, never in a cookie: a cookie for 127.0.0.1
// goes to every port of the host, other nodes' consoles included.
const state = { token: null, csrf: null, node: null, timer: null, watch: null, page: null };

// ---- small helpers ------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function short(hex) {
  return typeof hex === 'string' && hex.length > 16 ? hex.slice(0, 8) + '…' + hex.slice(-4) : String(hex ?? '');
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return (unit === 0 ? String(value) : value.toFixed(1)) + ' ' + units[unit];
}

function ms(n) {
  if (n === null || n === undefined) return '–';
  return n < 1000 ? Math.round(n) + ' ms' : (n / 1000).toFixed(1) + ' s';
}

function badge(text, kind) {
  return h('span', { class: 'badge' + (kind ? ' ' + kind : '') }, text);
}

/** A value the API gives as text (or null) and base64. */
function shown(text, base64) {
  if (text !== null && text !== undefined) return text;
  if (base64 === null || base64 === undefined) return '';
  return 'base64:' + base64;
}

function eventLink(id) {
  return h('a', { class: 'mono', href: '#/event/' + id, title: id }, short(id));
}

function authorLink(key, name) {
  return h('a', { href: '#/author/' + key, title: key }, name || short(key));
}

function panel(title, right, ...body) {
  return h('section', { class: 'panel' }, h('header', {}, h('h2', {}, title), right ? h('span', { class: 'right' }, right) : null), ...body);
}

function table(headers, rows, attrs) {
  return h('table', attrs || {},
    h('thead', {}, h('tr', {}, headers.map((t) => (t.startsWith('#') ? h('th', { class: 'num' }, t.slice(1)) : h('th', {}, t))))),
    h('tbody', {}, rows));
}

function card(label, value, note) {
  return h('div', { class: 'card' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), note ? h('div', { class: 'note' }, note) : null);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function authorized(headers) {
  return Object.assign({ Authorization: 'Bearer ' + (state.token || '') }, headers || {});
}

async function api(path, options) {
  // credentials: 'omit': the console sets no cookie, and the page sends none.
  const init = { method: (options && options.method) || 'GET', credentials: 'omit', cache: 'no-store', headers: authorized() };
  if (options && options.body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(options.body);
  }
  if (init.method !== 'GET') init.headers['X-Cairn-CSRF'] = state.csrf || '';
  const response = await fetch(path, init);
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { body = text; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : text;
    throw new ApiError(response.status, message || response.statusText);
  }
  return body;
}

/**
 * Reads the server-sent events of `path` with fetch (EventSource cannot send the bearer),
 * calling `onEvent(name, data)` for each, until the stream ends or `signal` aborts it.
 * Resolves when the stream ends; rejects on an error answer or a broken connection.
 */
async function readEvents(path, signal, onOpen, onEvent) {
  const response = await fetch(path, {
    credentials: 'omit', cache: 'no-store', signal, headers: authorized({ Accept: 'text/event-stream' }),
  });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let name = '';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, '');
      buffer = buffer.slice(end + 1);
      if (line === '') {
        // A blank line dispatches the event gathered so far (the SSE format).
        if (data.length) onEvent(name || 'message', data.join('\n'));
        name = '';
        data = [];
      } else if (line.startsWith(':')) {
        // A comment: the keep-alive.
      } else {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') name = text;
        else if (field === 'data') data.push(text);
      }
    }
    if (buffer.length > WATCH_LINE_CHARS_MAX) throw new Error('the watch stream sent a line too long');
  }
}

function stamp() {
  document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
}

// ---- the session --------------------------------------------------------------------------

async function login() {
  const match = /(?:^#|&)token=([0-9a-fA-F]{64})/.exec(location.hash);
  if (match) {
    // The token leaves the address bar (and the history) before anything else happens.
    history.replaceState(null, '', location.pathname + '#/cluster');
    state.token = match[1];
    try { sessionStorage.setItem(TOKEN_KEY, state.token); } catch (_) { /* storage off: memory only */ }
  } else {
    try { state.token = sessionStorage.getItem(TOKEN_KEY); } catch (_) { state.token = null; }
  }
  if (!state.token) return false;
  const response = await fetch('/console/session', { credentials: 'omit', cache: 'no-store', headers: authorized() });
  if (!response.ok) {
    if (response.status === 401) forgetToken();
    return false;
  }
  state.csrf = (await response.json()).csrf;
  return true;
}

function forgetToken() {
  state.token = null;
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
}

function showLogin() {
  const main = document.getElementById('main');
  main.dataset.page = 'login';
  main.replaceChildren(h('div', { class: 'login panel' },
    h('header', {}, h('h2', {}, 'Sign in')),
    h('div', { class: 'body' },
      h('p', {}, 'This console needs its token. On the node, run'),
      h('p', {}, h('code', {}, 'cairnctl console-url')),
      h('p', {}, 'and open the address it prints. The token stays in the address\'s fragment, which is never sent to a server.'))));
}

// ---- routing ------------------------------------------------------------------------------

function stopPage() {
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  if (state.watch) { state.watch.abort(); state.watch = null; }
}

function route() {
  stopPage();
  const hash = location.hash.replace(/^#\/?/, '').split('?')[0];
  const [page, arg] = hash.split('/');
  for (const link of document.querySelectorAll('[data-nav]')) {
    const active = link.dataset.nav === page || (link.dataset.nav === 'authors' && page === 'author');
    link.classList.toggle('active', active);
  }
  const main = document.getElementById('main');
  const pages = { cluster: clusterPage, document: documentPage, authors: authorsPage, author: authorPage, event: eventPage };
  const render = pages[page] || clusterPage;
  main.dataset.page = pages[page] ? page : 'cluster';
  main.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  let decoded = null;
  try {
    decoded = arg ? decodeURIComponent(arg) : null;
  } catch (_) {
    showError(main, new Error('the address names no valid page: ' + arg));
    return;
  }
  render(main, decoded).catch((error) => showError(main, error));
}

function showError(main, error) {
  if (error instanceof ApiError && error.status === 401) { stopPage(); forgetToken(); showLogin(); return; }
  main.replaceChildren(h('div', { class: 'banner bad' }, h('strong', {}, 'Error'), ' ', error.message || String(error)));
}

// ---- the cluster --------------------------------------------------------------------------

function peerState(peer) {
  const kinds = { connected: 'ok', connecting: 'warn' };
  return badge(peer.state.replace(/_/g, ' '), kinds[peer.state] || 'bad');
}

function rejections(stats) {
  const entries = Object.entries(stats.rejected || {}).filter(([, n]) => n > 0);
  const parts = entries.map(([reason, n]) => reason + ': ' + n);
  if (stats.bad_messages) parts.push('bad messages: ' + stats.bad_messages);
  if (stats.events_rate_limited) parts.push('rate limited: ' + stats.events_rate_limited);
  return parts.length ? h('span', { class: 'mono' }, parts.join(', ')) : h('span', { class: 'muted' }, 'none');
}

function headerColumn(title, header) {
  return h('div', {}, h('h3', {}, title), table(['field', 'value'], [
    h('tr', {}, h('td', {}, 'id'), h('td', { class: 'mono wrap' }, header.id)),
    h('tr', {}, h('td', {}, 'seq'), h('td', { class: 'mono' }, header.seq)),
    h('tr', {}, h('td', {}, 'lamport'), h('td', { class: 'mono' }, header.lamport)),
    h('tr', {}, h('td', {}, 'deps'), h('td', { class: 'mono wrap' }, header.deps.length ? header.deps.map(short).join(' ') : 'none')),
    h('tr', {}, h('td', {}, 'ops hash'), h('td', { class: 'mono wrap' }, header.ops_hash)),
    h('tr', {}, h('td', {}, 'signature'), h('td', { class: 'mono wrap' }, header.sig)),
  ]));
}

async function clusterPage(main) {
  const draw = async () => {
    const [status, peers, members, evidence] = await Promise.all([
      api('/v1/status'), api('/v1/peers'), api('/v1/members'), api('/v1/evidence'),
    ]);
    if (main.dataset.page !== 'cluster') return;
    state.node = status.name;
    document.getElementById('node').textContent = status.name + ' · ' + short(status.key);
    const writes = status.writes_refused ? badge('refused', 'bad') : badge('accepted', 'ok');
    const peerRows = peers.peers.map((p) => h('tr', { class: 'peer', 'data-peer': p.name },
      h('td', {}, authorLink(p.key, p.name)),
      h('td', {}, peerState(p)),
      h('td', { class: 'mono' }, p.address || '–'),
      h('td', { class: 'num' }, ms(p.rtt_ms)),
      h('td', { class: 'num', title: 'events held here past what the peer held at its last sync session with this node' },
        p.lag_events === null || p.lag_events === undefined ? '–' : String(p.lag_events)),
      h('td', { class: 'num' }, p.last_seen_ms_ago === null || p.last_seen_ms_ago === undefined ? '–' : ms(p.last_seen_ms_ago) + ' ago'),
      h('td', { class: 'num' }, bytes(p.stats.bytes_in)),
      h('td', { class: 'num' }, bytes(p.stats.bytes_out)),
      h('td', { class: 'num' }, p.stats.events_in + ' / ' + p.stats.events_out),
      h('td', { class: 'num', title: 'anti-entropy sessions that found both sides equal / that exchanged tips' },
        p.stats.sessions_in_sync + ' / ' + p.stats.sessions_tips),
      h('td', {}, rejections(p.stats))));
    // Lag: how many events each author has here; a peer that lags shows fewer on its own page.
    const authorRows = status.authors.map((a) => h('tr', {},
      h('td', {}, authorLink(a.key, a.name)),
      h('td', { class: 'num' }, a.events),
      h('td', { class: 'num' }, bytes(a.bytes)),
      h('td', { class: 'num' }, a.events_per_sec.toFixed(1) + ' /s')));
    const seats = members.seats.map((s) => h('tr', {},
      h('td', {}, s.name), h('td', { class: 'mono' }, short(s.key)), h('td', { class: 'mono' }, s.founder === s.key ? 'itself' : short(s.founder))));
    const pending = members.pending.map((c) => h('tr', {},
      h('td', { class: 'mono' }, short(c.change)), h('td', {}, c.action), h('td', { class: 'mono' }, short(c.key)),
      h('td', {}, short(c.seat)), h('td', { class: 'num' }, c.votes + ' of ' + members.threshold)));
    const proofs = evidence.evidence.map((e) => h('div', { class: 'evidence' },
      h('div', { class: 'body' }, badge('equivocation', 'bad'), ' ', authorLink(e.author, e.author_name), ' signed two events with seq ', h('strong', {}, e.seq)),
      h('div', { class: 'split' }, headerColumn('First header', e.first), headerColumn('Second header', e.second))));
    const doubles = evidence.double_approvals.map((d) => h('div', { class: 'body' },
      badge('double approval', 'bad'), ' seat ', d.name || short(d.seat), ' voted twice in round ', d.round, ': ',
      eventLink(d.first.event), ' and ', eventLink(d.second.event)));
    main.replaceChildren(
      h('h1', {}, 'Cluster'),
      h('p', { class: 'sub' }, 'As node ', h('strong', {}, status.name), ' sees it. Cluster ', h('span', { class: 'mono' }, short(status.cluster_id)), '.'),
      h('div', { class: 'cards' },
        card('Peers connected', status.n_peers_connected + ' / ' + status.n_peers),
        card('Own seq', status.own_seq),
        card('Events', status.n_events),
        card('Writes', writes, status.buffer_events + ' buffered'),
        card('Evidence', status.n_evidence, status.n_evidence ? 'equivocations proved' : 'none'),
        card('Membership', 'round ' + status.membership.round, status.membership.n_seats + ' seats, ' + status.membership.n_pending + ' pending')),
      panel('Peers', peers.peers.length + ' other keys', peerRows.length
        ? table(['Peer', 'State', 'Address', '#RTT', '#Lag', '#Last seen', '#Bytes in', '#Bytes out', '#Events in / out', '#Sync equal / behind', 'Rejected'], peerRows, { id: 'peers' })
        : h('div', { class: 'empty' }, 'No peers.')),
      panel('Authors', 'events of each author held here: a node that lags holds fewer', table(['Author', '#Events', '#Bytes', '#Rate'], authorRows)),
      panel('Membership', 'threshold ' + members.threshold + ', ' + members.n_changes + ' changes in force',
        table(['Seat', 'Key', 'Founder'], seats),
        pending.length ? table(['Pending change', 'Action', 'Key', 'Seat', '#Votes'], pending) : h('div', { class: 'empty' }, 'No pending changes.')),
      panel('Evidence', proofs.length + doubles.length ? '' : 'none',
        proofs.length + doubles.length ? [...proofs, ...doubles] : h('div', { class: 'empty' }, 'No equivocation or double approval seen.')));
    stamp();
  };
  await draw();
  state.timer = setInterval(() => draw().catch((error) => showError(main, error)), CLUSTER_REFRESH_MS);
}

// ---- the document -------------------------------------------------------------------------

function stateText(kind, s) {
  if (s.state_error) return { text: 'unavailable: ' + s.state_error, note: '' };
  if (kind === 'register') {
    const n = (s.siblings || []).length;
    return { text: shown(s.value, s.value_base64), note: n > 1 ? n + ' concurrent values' : '' };
  }
  if (kind === 'counter') return { text: String(s.value), note: '' };
  const members = (s.members || []).map((m) => shown(m.value, m.value_base64));
  return { text: members.join(', '), note: members.length + (members.length === 1 ? ' member' : ' members') };
}

function docRow(kind, key, keyBase64, s, position) {
  const { text, note } = stateText(kind, s);
  return h('tr', { 'data-key': kind + ':' + keyBase64 },
    h('td', {}, badge(kind)),
    h('td', { class: 'mono key' }, shown(key, keyBase64)),
    h('td', { class: 'value' }, text, note ? h('span', { class: 'muted' }, '  (' + note + ')') : null),
    h('td', { class: 'num muted position' }, position ? '#' + position : ''));
}

const kindPaths = { register: 'registers', counter: 'counters', set: 'sets' };

async function documentPage(main) {
  const rows = h('tbody', {});
  const status = h('span', { class: 'badge' }, 'connecting');
  const result = h('span', { class: 'result' });
  const keyInput = h('input', { class: 'key', name: 'key', placeholder: 'key', required: true, id: 'write-key' });
  const valueInput = h('input', { class: 'val', name: 'value', placeholder: 'value', id: 'write-value' });
  const form = h('form', { class: 'write', id: 'write' }, keyInput, valueInput, h('button', { type: 'submit' }, 'Put'), result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    result.className = 'result';
    result.textContent = 'writing…';
    try {
      const ack = await api('/v1/registers/' + encodeURIComponent(keyInput.value), { method: 'PUT', body: { value: valueInput.value } });
      result.textContent = 'stored as seq ' + ack.seq + ', event ' + short(ack.id);
    } catch (error) {
      result.className = 'result bad';
      result.textContent = error.message;
    }
  });
  const count = h('span', {});
  main.replaceChildren(
    h('h1', {}, 'Document'),
    h('p', { class: 'sub' }, 'Every key with a value, live: changes arrive through the watch stream as this node applies them.'),
    panel('Write a register', 'signed by this node', h('div', { class: 'body' }, form)),
    panel('Keys', h('span', {}, count, ' ', status), h('table', { id: 'document' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Kind'), h('th', {}, 'Key'), h('th', {}, 'Value'), h('th', { class: 'num' }, 'Change'))), rows)));

  const index = new Map();
  const put = (kind, key, keyBase64, s, position, flash) => {
    const id = kind + ':' + keyBase64;
    const row = docRow(kind, key, keyBase64, s, position);
    const old = index.get(id);
    const empty = (kind === 'register' && (s.siblings || []).length === 0) || (kind === 'set' && (s.members || []).length === 0);
    if (old && empty) { old.remove(); index.delete(id); }
    else if (old) { old.replaceWith(row); index.set(id, row); }
    else if (!empty) { rows.append(row); index.set(id, row); }
    if (flash && !empty) row.classList.add('flash');
    count.textContent = index.size + (index.size === 1 ? ' key' : ' keys');
  };

  // Subscribe first, so that no change between the listing and the stream is lost.
  const watch = new AbortController();
  state.watch = watch;
  const onOpen = () => { status.className = 'badge ok live'; status.textContent = 'live'; };
  const onEvent = (name, data) => {
    if (name === 'change') {
      const change = JSON.parse(data);
      put(change.kind, change.key, change.key_base64, change, change.position, true);
      stamp();
    } else if (name === 'lagged') {
      route();
    }
  };
  readEvents('/v1/watch', watch.signal, onOpen, onEvent).then(
    () => { throw new Error('the watch stream ended'); },
  ).catch((error) => {
    if (watch.signal.aborted) return;
    if (error instanceof ApiError && error.status === 401) { showError(main, error); return; }
    // Changes may have been missed while the stream was down: list the document again.
    status.className = 'badge warn';
    status.textContent = 'reconnecting';
    setTimeout(() => { if (!watch.signal.aborted) route(); }, WATCH_RETRY_MS);
  });

  const page = await api('/v1/keys?limit=' + DOCUMENT_KEYS_MAX);
  const states = await Promise.all(page.keys.map((k) =>
    api('/v1/' + kindPaths[k.kind] + '/' + encodeURIComponent(k.key === null ? '' : k.key)).catch((e) => ({ state_error: e.message }))));
  page.keys.forEach((k, i) => {
    if (!index.has(k.kind + ':' + k.key_base64)) put(k.kind, k.key, k.key_base64, states[i], null, false);
  });
  if (page.next !== null) count.textContent += ' (the first ' + DOCUMENT_KEYS_MAX + ')';
  stamp();
}

// ---- authors and their chains -------------------------------------------------------------

async function authorsPage(main) {
  const status = await api('/v1/status');
  const rows = status.authors.map((a) => h('tr', {},
    h('td', {}, authorLink(a.key, a.name)), h('td', { class: 'mono' }, a.key),
    h('td', { class: 'num' }, a.events), h('td', { class: 'num' }, bytes(a.bytes))));
  main.replaceChildren(h('h1', {}, 'Authors'), h('p', { class: 'sub' }, 'Each author signs a chain of events, seq 1, 2, 3, …'),
    panel('Authors', rows.length + ' with events here', table(['Name', 'Key', '#Events', '#Bytes'], rows)));
  stamp();
}

async function authorPage(main, key) {
  const status = await api('/v1/status');
  const author = status.authors.find((a) => a.key === key || a.name === key);
  const total = author ? author.events : 0;
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const after = params.has('after') ? Number(params.get('after')) : Math.max(0, total - CHAIN_PAGE_EVENTS);
  const page = await api('/v1/events?author=' + encodeURIComponent(key) + '&after=' + after + '&limit=' + CHAIN_PAGE_EVENTS);
  const events = page.events;
  // The chain holds when seqs follow one another; two events with one seq are a fork.
  let flaw = null;
  for (let i = 1; i < events.length; i += 1) {
    if (events[i].seq === events[i - 1].seq) { flaw = 'two events with seq ' + events[i].seq + ' (an equivocation)'; break; }
    if (events[i].seq !== events[i - 1].seq + 1) { flaw = 'seq ' + events[i].seq + ' follows seq ' + events[i - 1].seq; break; }
  }
  const rows = events.slice().reverse().map((e) => h('tr', { class: 'chain' },
    h('td', { class: 'num' }, e.seq), h('td', {}, eventLink(e.id)), h('td', { class: 'num' }, e.lamport),
    h('td', { class: 'num' }, e.n_deps), h('td', { class: 'num' }, e.n_ops), h('td', { class: 'num' }, bytes(e.size)),
    h('td', {}, e.excluded ? badge('excluded', 'bad') : badge('applied', 'ok'))));
  const name = (events[0] && events[0].author_name) || (author && author.name) || short(key);
  const base = '#/author/' + encodeURIComponent(key);
  const pager = h('span', { class: 'pager' },
    after > 0 ? h('a', { href: base + '?after=' + Math.max(0, after - CHAIN_PAGE_EVENTS) }, '← earlier') : null,
    page.next !== null ? h('a', { href: base + '?after=' + page.next }, 'later →') : null);
  const first = events.length ? events[0].seq : 0;
  const last = events.length ? events[events.length - 1].seq : 0;
  main.replaceChildren(
    h('h1', {}, 'Chain of ', name),
    h('p', { class: 'sub mono' }, events.length ? events[0].author : key),
    events.length
      ? h('div', { class: flaw ? 'banner bad' : 'banner ok', id: 'chain-check' }, h('strong', {}, flaw ? 'Broken chain: ' : 'Unbroken chain: '),
        flaw || ('seq ' + first + ' to ' + last + ', each event after the one before'))
      : null,
    panel('Events', h('span', {}, total + ' held here ', pager),
      rows.length ? table(['#Seq', 'Event', '#Lamport', '#Deps', '#Ops', '#Size', 'State'], rows, { id: 'chain' }) : h('div', { class: 'empty' }, 'No events by this author here.')));
  stamp();
}

// ---- one event ----------------------------------------------------------------------------

function opRow(op) {
  const what = {
    put: () => [shown(op.key, op.key_base64), '= ' + shown(op.value, op.value_base64)],
    del: () => [shown(op.key, op.key_base64), ''],
    incr: () => [shown(op.key, op.key_base64), (op.delta >= 0 ? '+' : '') + op.delta],
    add: () => [shown(op.key, op.key_base64), '+ ' + shown(op.element, op.element_base64)],
    remove: () => [shown(op.key, op.key_base64), '− ' + shown(op.element, op.element_base64)],
    propose: () => ['change ' + short(op.change), op.action + ' ' + short(op.key) + ' in round ' + op.round],
    approve: () => ['change ' + short(op.change), 'round ' + op.round],
    rotate: () => [short(op.key), 'to ' + short(op.successor) + ' after seq ' + op.cut],
  }[op.op];
  const [target, detail] = what ? what() : ['', JSON.stringify(op)];
  return h('tr', {}, h('td', {}, badge(op.op)), h('td', { class: 'mono' }, target), h('td', { class: 'mono wrap' }, detail));
}

async function eventPage(main, id) {
  const [event, report] = await Promise.all([api('/v1/events/' + encodeURIComponent(id)), api('/v1/events/' + encodeURIComponent(id) + '/verify')]);
  const verdicts = { valid: ['ok', 'Verified: every validity rule holds'], invalid: ['bad', 'Invalid: a rule fails'], undecided: ['warn', 'Undecided: no rule fails, some could not be judged'] };
  const [kind, words] = verdicts[report.outcome] || ['warn', report.outcome];
  const checks = report.checks.map((c) => h('tr', { class: 'check', 'data-check': c.name },
    h('td', { class: 'num' }, c.rule), h('td', { class: 'mono' }, c.name),
    h('td', {}, badge(c.verdict, c.ok === true ? 'ok' : c.ok === false ? 'bad' : 'warn')),
    h('td', {}, c.reason ? c.reason + ': ' : '', c.detail)));
  const fields = [
    ['id', h('span', { class: 'mono wrap' }, event.id)],
    ['author', h('span', {}, authorLink(event.author, event.author_name), ' ', h('span', { class: 'mono muted' }, event.author))],
    ['seq', event.seq],
    ['lamport', event.lamport],
    ['deps', event.deps.length ? h('span', {}, event.deps.map((d) => [eventLink(d), ' '])) : h('span', { class: 'muted' }, 'none')],
    ['ops hash', h('span', { class: 'mono wrap' }, event.ops_hash)],
    ['size', bytes(event.size)],
    ['state', event.excluded ? badge('excluded from the document', 'bad') : badge('applied', 'ok')],
  ].map(([name, value]) => h('tr', {}, h('th', {}, name), h('td', {}, value)));
  main.replaceChildren(
    h('h1', {}, 'Event ', h('span', { class: 'mono' }, short(event.id))),
    h('p', { class: 'sub' }, 'Seq ', event.seq, ' of ', authorLink(event.author, event.author_name), '.'),
    h('div', { class: 'banner ' + kind, id: 'verdict' }, h('strong', {}, words), ' — checked again now by this node on the event\'s canonical bytes (' + report.size + ' bytes).'),
    panel('Header', null, h('table', { class: 'kv' }, h('tbody', {}, fields))),
    panel('Ops', event.ops.length + (event.ops.length === 1 ? ' op' : ' ops'), table(['Op', 'Key', 'Value'], event.ops.map(opRow))),
    panel('Verification', 'docs/PROTOCOL.md §7', table(['#Rule', 'Check', 'Verdict', 'Detail'], checks, { id: 'checks' })),
    h('section', { class: 'panel' }, h('details', {}, h('summary', {}, 'Canonical bytes (hex), for ', h('code', {}, 'cairnctl inspect event -')), h('pre', { class: 'hex' }, event.encoded_hex))));
  stamp();
}

// ---- start --------------------------------------------------------------------------------

document.getElementById('goto').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = document.getElementById('goto-id');
  const id = input.value.trim().toLowerCase();
  if (/^[0-9a-f]{64}$/.test(id)) { location.hash = '#/event/' + id; input.value = ''; }
});

(async () => {
  let signedIn = false;
  try { signedIn = await login(); } catch (_) { signedIn = false; }
  if (!signedIn) { showLogin(); return; }
  window.addEventListener('hashchange', route);
  route();
  api('/v1/status').then((status) => {
    document.getElementById('node').textContent = status.name + ' · ' + short(status.key);
  }).catch(() => {});
})();
