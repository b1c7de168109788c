// One streamed turn: the question posted, the reply followed to its end through network cuts.
//
// The question goes out with an Idempotency-Key, so posting it again after a cut is answered
// once (replayed, or only its reply run again). Once the server has named the stored question
// (event "0"), a cut stream is resumed after the last event seen, with Last-Event-ID, and a
// delta counts only when its id is above the last one counted, so no text is ever doubled.
// Stop asks the server to end the reply where it is: its stored, incomplete reply ends the turn.
// A turn followed after a reload has no key; retrying it asks the server to answer its stored
// question again (a new key of its own), which works while that question is the chat's last.
// A regenerate or an edit is a turn that starts its own way (`start`); once its question is
// stored, retrying it regenerates the reply to that question.
//
// The turn reports to a view: question(message), progress(text), reconnecting(flag),
// answered(message), failed(error) and stopFailed(error).

import { ApiError, newIdempotencyKey } from "./api.js";
import { readEvents } from "./sse.js";

const RETRY_DELAYS_MS = [300, 600, 1200, 2500, 5000, 8000];
const POST_ATTEMPTS = 3; // while the question may not be stored; a resume goes on as long as the page
const TURN_NOT_RUNNING = "turn-not-running";
const KEY_IN_FLIGHT = "idempotency-key-in-flight";

export class Turn {
  constructor(api, chatId, content, view, { userMessageId = null, images = [], start = null } = {}) {
    this.api = api;
    this.chatId = chatId;
    this.content = content;
    this.images = images; // data: URLs sent with the question
    this.start = start; // (idempotencyKey) => response: how a regenerate or an edit asks; null: a post
    this.view = view;
    this.idempotencyKey = content === null && start === null ? null : newIdempotencyKey();
    this.userMessageId = userMessageId;
    this.posted = userMessageId !== null; // the server has the turn: follow it rather than post it
    this.lastDelta = 0;
    this.text = "";
    this.ended = false;
    this.stopping = false;
    this.cancelSent = false;
  }

  /** The turn that asked `userMessageId`, followed from its start (after a page reload). */
  static following(api, chatId, userMessageId, view) {
    return new Turn(api, chatId, null, view, { userMessageId });
  }

  /** A new reply to the question `messageId` (or to the question a reply `messageId` answers). */
  static regenerating(api, chatId, messageId, view) {
    const start = (idempotencyKey) => api.regenerateTurn(chatId, messageId, { idempotencyKey });
    return new Turn(api, chatId, null, view, { start });
  }

  /** `content` (with `images`) asked in place of the question `messageId`, on a new branch. */
  static editing(api, chatId, messageId, content, images, view) {
    const start = (idempotencyKey) => api.editTurn(chatId, messageId, content, { idempotencyKey, images });
    return new Turn(api, chatId, content, view, { images, start });
  }

  async run() {
    let failures = 0;
    while (!this.ended) {
      const before = this.lastDelta;
      try {
        await this.follow(await this.open());
        if (!this.ended) throw ApiError.unreachable(); // the body ended before the final event
      } catch (error) {
        if (this.ended) return;
        if (this.lastDelta > before) failures = 0;
        const wait = this.retryDelay(error, failures);
        if (wait === null) {
          this.fail(error);
          return;
        }
        failures += 1;
        this.view.reconnecting(true);
        await pause(wait);
      }
    }
  }

  /** Ask again after a failure: the question posted with its key (the server answers it once),
   * or, for a turn only followed, its stored question answered again. */
  retry() {
    this.ended = false;
    this.stopping = false;
    this.cancelSent = false;
    this.posted = false;
    if (this.start !== null) {
      if (this.userMessageId !== null) this.regenerateStored();
    } else if (this.content !== null) this.userMessageId = null;
    else this.idempotencyKey = newIdempotencyKey();
    this.lastDelta = 0;
    this.text = "";
    return this.run();
  }

  /** From now on, ask for a new reply to the stored question (what failed was its reply). */
  regenerateStored() {
    const question = this.userMessageId;
    this.start = (idempotencyKey) => this.api.regenerateTurn(this.chatId, question, { idempotencyKey });
    this.idempotencyKey = newIdempotencyKey();
    this.userMessageId = null;
  }

  async stop() {
    this.stopping = true;
    if (this.ended || !this.posted || this.cancelSent) return;
    this.cancelSent = true;
    try {
      this.finish(await this.api.cancelTurn(this.chatId, this.userMessageId));
    } catch (error) {
      // Not running: it has just ended, and its stream brings the final event.
      if (!this.ended && error.slug !== TURN_NOT_RUNNING) {
        this.cancelSent = false;
        this.view.stopFailed(error);
      }
    }
  }

  open() {
    const key = { idempotencyKey: this.idempotencyKey };
    if (this.posted) return this.api.resumeTurn(this.chatId, this.userMessageId, String(this.lastDelta));
    if (this.start !== null) return this.start(this.idempotencyKey);
    if (this.content !== null) return this.api.postTurn(this.chatId, this.content, { ...key, images: this.images });
    return this.api.retryTurn(this.chatId, this.userMessageId, key);
  }

  async follow(response) {
    const events = readEvents(response.body);
    try {
      while (!this.ended) {
        let next;
        try {
          next = await events.next();
        } catch {
          throw ApiError.unreachable();
        }
        if (next.done) return;
        this.view.reconnecting(false);
        this.apply(next.value);
      }
    } finally {
      events.return();
    }
  }

  apply(event) {
    const data = JSON.parse(event.data);
    if (event.event === "user_message") {
      this.userMessageId = data.id;
      this.posted = true;
      this.view.question(data);
      if (this.stopping) this.stop();
    } else if (event.event === "delta") {
      const number = Number(event.id);
      if (number > this.lastDelta) {
        this.lastDelta = number;
        this.text += data.content;
        this.view.progress(this.text);
      }
    } else if (event.event === "assistant_message") {
      this.finish(data);
    } else if (event.event === "error") {
      this.fail(new ApiError(data));
    }
  }

  finish(message) {
    if (this.ended) return;
    this.ended = true;
    this.view.answered(message);
  }

  fail(error) {
    if (this.ended) return;
    this.ended = true;
    this.view.failed(error);
  }

  retryDelay(error, failures) {
    if (!(error instanceof ApiError)) return null;
    if (error.slug === KEY_IN_FLIGHT) return (error.retryAfter ?? 1) * 1000;
    if (!error.network) return null;
    // Until the question is known stored, give up soon (and at once when offline): its notice
    // offers a retry, which sends the same key.
    if (!this.posted && (failures >= POST_ATTEMPTS || !navigator.onLine)) return null;
    const delay = RETRY_DELAYS_MS[Math.min(failures, RETRY_DELAYS_MS.length - 1)];
    return delay * (0.75 + Math.random() / 2);
  }
}

/** Wait `ms`, or less when the browser comes back online. */
function pause(ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    window.addEventListener("online", done);
  });
}
