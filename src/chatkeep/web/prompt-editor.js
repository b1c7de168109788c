// The chat's system prompt, edited in a dialog from the chat's header: what its turns send the
// model first. Empty, the chat uses the server's default (CHATKEEP_SYSTEM_PROMPT).

import { byId, h, returnFocus } from "./dom.js";
import { problemNotice } from "./problems.js";

const MAX_CHARS = 32_000; // as the server takes

export class PromptEditor {
  constructor(api, { onChange, onError }) {
    this.api = api;
    this.onChange = onChange;
    this.onError = onError;
    this.chat = null;
    this.button = h(
      "button",
      {
        id: "prompt-button",
        type: "button",
        className: "button button-quiet",
        attrs: { "aria-haspopup": "dialog" },
        on: { click: () => this.open() },
      },
      icon("M5 5h14v10H9l-4 4z M9 9h6"),
      h("span", { className: "label", text: "Instructions" }), // an icon alone on a phone, as its neighbours
    );
    byId("rename-button").before(this.button);
    this.text = h("textarea", { id: "prompt-input", rows: 8, maxLength: MAX_CHARS, spellcheck: true });
    this.notice = h("div", { className: "prompt-notice" });
    this.dialog = h(
      "dialog",
      { id: "prompt-dialog", className: "dialog", attrs: { "aria-labelledby": "prompt-title" } },
      h(
        "form",
        { method: "dialog", on: { submit: (event) => this.save(event) } },
        h("h2", { id: "prompt-title", text: "Instructions for this chat" }),
        h("label", { className: "field-label", htmlFor: "prompt-input", text: "System prompt" }),
        this.text,
        h("p", { className: "field-hint", text: "Sent to the model before the chat's messages. Empty: the server's default." }),
        this.notice,
        h(
          "div",
          { className: "dialog-actions" },
          h("button", { type: "button", className: "button", text: "Cancel", on: { click: () => this.dialog.close() } }),
          h("button", { type: "submit", className: "button button-primary", text: "Save" }),
        ),
      ),
    );
    this.dialog.addEventListener("close", () => returnFocus(this.button));
    document.body.append(this.dialog);
  }

  /** The open chat (null: a new one, which has no prompt to edit until it is created). A chat
   *  still loading has no prompt yet either: the button waits for it, rather than show an empty one. */
  show(chat) {
    this.chat = chat;
    this.button.disabled = chat !== null && chat.system_prompt === undefined;
  }

  open() {
    if (this.chat === null || this.chat.system_prompt === undefined) return;
    this.text.value = this.chat.system_prompt ?? "";
    this.notice.replaceChildren();
    this.dialog.showModal();
    this.text.focus();
  }

  async save(event) {
    event.preventDefault();
    const chat = this.chat;
    const prompt = this.text.value.trim() ? this.text.value : null;
    try {
      const changed = await this.api.updateChat(chat.id, { system_prompt: prompt });
      if (this.chat?.id === changed.id) this.chat = changed;
      this.onChange(changed);
      this.dialog.close();
    } catch (error) {
      this.notice.replaceChildren(problemNotice(error));
      this.onError(error);
    }
  }
}

/** The header's icon drawn by `path`, like the header's other buttons' (hidden from screen readers). */
function icon(path) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "path");
  line.setAttribute("d", path);
  svg.append(line);
  return svg;
}
