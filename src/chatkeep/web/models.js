// The model a chat asks for: a picker in the chat's header, shown when the server serves more
// than one model (GET /models). A new chat is created with the model picked; an open chat's
// model changes at once (PATCH /chats/{id}), for its next turns. Each reply names the model that
// wrote it (messages.js).

import { byId, h } from "./dom.js";
import { problemNotice } from "./problems.js";

export class ModelPicker {
  constructor(api, { onChange, onError }) {
    this.api = api;
    this.onChange = onChange;
    this.onError = onError;
    this.chat = null;
    this.select = h("select", {
      id: "model-picker",
      attrs: { "aria-label": "Model", title: "The model this chat's replies come from" },
      on: { change: () => this.changed() },
    });
    this.field = h("div", { className: "model-field", hidden: true }, this.select);
    byId("chat-actions").before(this.field);
  }

  /** Ask the server which models it serves; the picker shows when there is a choice. */
  async load() {
    let models;
    try {
      models = await this.api.listModels();
    } catch (error) {
      this.onError(error);
      return;
    }
    const others = models.data.map((model) => model.id).filter((id) => id !== models.default);
    const option = (value, text) => h("option", { value, text });
    this.select.replaceChildren(option("", `${models.default} (default)`), ...others.map((id) => option(id, id)));
    this.field.hidden = others.length === 0;
    this.show(this.chat);
  }

  /** Show the model of `chat` (null: a new chat, which starts with the default). */
  show(chat) {
    this.chat = chat;
    this.select.disabled = chat !== null && chat.model === undefined; // still loading: a pick would be lost
    const model = chat?.model ?? "";
    this.select.value = [...this.select.options].some((option) => option.value === model) ? model : "";
  }

  /** The model picked for a chat about to be created: null for the server's default. */
  get model() {
    return this.select.value || null;
  }

  async changed() {
    const chat = this.chat;
    if (chat === null || chat.model === undefined) return; // a new chat: created with it
    const model = this.model;
    try {
      const changed = await this.api.updateChat(chat.id, { model });
      if (this.chat?.id === changed.id) this.chat = changed;
      this.onChange(changed);
    } catch (error) {
      this.show(chat);
      byId("chat-notice").replaceChildren(problemNotice(error));
      this.onError(error);
    }
  }
}
