// chatkeep's HTTP API as the page uses it: JSON in and out, failures as ApiError.
//
// Every failure becomes one ApiError: the server's RFC 9457 problem (type, title, status,
// detail, Retry-After, whether it asked for a Bearer key), or status 0 when the server could not
// be reached at all. The API key lives in localStorage and goes out as `Authorization: Bearer`.

const KEY_STORAGE = "chatkeep.apiKey";

export class ApiError extends Error {
  constructor(problem, { status = problem.status ?? 0, retryAfter = null, needsKey = false } = {}) {
    super(problem.detail || problem.title || "request failed");
    this.name = "ApiError";
    this.status = status;
    this.type = problem.type ?? "about:blank";
    // The problem's own name: the end of its type URI ("urn:chatkeep:problem:chat-not-found").
    this.slug = this.type === "about:blank" ? "" : this.type.split(/[:/]/).pop();
    this.title = problem.title ?? "";
    this.detail = problem.detail ?? "";
    this.requestId = problem.request_id ?? null;
    this.userMessageId = problem.user_message_id ?? null;
    this.retryAfter = retryAfter;
    this.needsKey = needsKey || status === 401;
  }

  /** The failure of a request that never got an answer: the server is down, or the network. */
  static unreachable() {
    return new ApiError({ title: "No answer" }, { status: 0 });
  }

  get network() {
    return this.status === 0;
  }
}

export class Api {
  constructor(base = "") {
    this.base = base;
  }

  get key() {
    try {
      return localStorage.getItem(KEY_STORAGE) ?? "";
    } catch {
      return ""; // storage off: the page works without keeping a key
    }
  }

  set key(value) {
    try {
      if (value) localStorage.setItem(KEY_STORAGE, value);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      // storage off: nothing to keep it in
    }
  }

  /** A page of chats, the latest active first, after the place `after` (a list's `last_cursor`). */
  listChats({ limit, after }) {
    return this.json("GET", `/chats${query({ limit, after, order_by: "updated_at" })}`);
  }

  /** The models a chat may name, and the default. */
  listModels() {
    return this.json("GET", "/models");
  }

  createChat(body, { idempotencyKey }) {
    return this.json("POST", "/chats", { body, headers: { "Idempotency-Key": idempotencyKey } });
  }

  updateChat(chatId, changes) {
    return this.json("PATCH", `/chats/${encodeURIComponent(chatId)}`, { body: changes });
  }

  deleteChat(chatId) {
    return this.request("DELETE", `/chats/${encodeURIComponent(chatId)}`);
  }

  getChat(chatId) {
    return this.json("GET", `/chats/${encodeURIComponent(chatId)}`);
  }

  /** A page of messages, newest first, older than the message `after` when it is given. */
  listMessages(chatId, { limit, after }) {
    return this.json("GET", `/chats/${encodeURIComponent(chatId)}/messages${query({ order: "desc", limit, after })}`);
  }

  summary(chatId, { refresh = false } = {}) {
    return this.json("GET", `/chats/${encodeURIComponent(chatId)}/summary${query({ refresh: refresh || null })}`);
  }

  /** The streamed turn: a response whose body is the turn's server-sent events. `images`: data: URLs. */
  postTurn(chatId, content, { idempotencyKey, images = [] }) {
    return this.request("POST", `/chats/${encodeURIComponent(chatId)}/messages`, {
      body: images.length ? { content, images, stream: true } : { content, stream: true },
      headers: { "Idempotency-Key": idempotencyKey, Accept: "text/event-stream" },
    });
  }

  /** The streamed turn answering the stored question `userMessageId` again, its reply lost. */
  retryTurn(chatId, userMessageId, { idempotencyKey }) {
    const path = `/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(userMessageId)}/retry`;
    return this.request("POST", path, {
      body: { stream: true },
      headers: { "Idempotency-Key": idempotencyKey, Accept: "text/event-stream" },
    });
  }

  /** The streamed turn writing a new reply to a question (`messageId`: the question, or a reply
   * to it): what came after the question stays on a branch of its own. */
  regenerateTurn(chatId, messageId, { idempotencyKey }) {
    return this.request("POST", `${messagePath(chatId, messageId)}/regenerate`, {
      body: { stream: true },
      headers: { "Idempotency-Key": idempotencyKey, Accept: "text/event-stream" },
    });
  }

  /** The streamed turn answering `content` in place of the question `messageId`, which stays,
   * with what came after it, on a branch of its own. */
  editTurn(chatId, messageId, content, { idempotencyKey, images = [] }) {
    return this.request("POST", `${messagePath(chatId, messageId)}/edit`, {
      body: images.length ? { content, images, stream: true } : { content, stream: true },
      headers: { "Idempotency-Key": idempotencyKey, Accept: "text/event-stream" },
    });
  }

  /** Make the branch through `messageId` the chat's current one; answers the chat. */
  switchBranch(chatId, messageId) {
    return this.json("PUT", `/chats/${encodeURIComponent(chatId)}/branch`, { body: { message_id: messageId } });
  }

  /** The events of a streamed turn after `lastEventId`, ending with its final event. */
  resumeTurn(chatId, userMessageId, lastEventId) {
    const path = `/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(userMessageId)}/events`;
    return this.request("GET", path, { headers: { "Last-Event-ID": lastEventId, Accept: "text/event-stream" } });
  }

  cancelTurn(chatId, userMessageId) {
    const path = `/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(userMessageId)}/cancel`;
    return this.json("POST", path);
  }

  async json(method, path, options) {
    const response = await this.request(method, path, options);
    return response.json();
  }

  async request(method, path, { body, headers = {} } = {}) {
    const sent = { Accept: "application/json", ...headers };
    if (body !== undefined) sent["Content-Type"] = "application/json";
    const key = this.key;
    if (key) sent.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers: sent,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      throw ApiError.unreachable();
    }
    if (!response.ok) throw await problemOf(response);
    return response;
  }
}

export async function problemOf(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    // not a problem document (a proxy's error page): the status says enough
  }
  if (typeof problem !== "object" || problem === null) problem = {};
  return new ApiError(
    { title: response.statusText, ...problem },
    {
      status: response.status,
      retryAfter: retryAfterSeconds(response.headers.get("Retry-After")),
      needsKey: response.status === 401 && /^bearer/i.test(response.headers.get("WWW-Authenticate") ?? ""),
    },
  );
}

function messagePath(chatId, messageId) {
  return `/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(messageId)}`;
}

function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** A fresh Idempotency-Key: a retry that sends it again is answered once. */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}
