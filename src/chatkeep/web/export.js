// Export and import on the page: the open chat's Export buttons (JSONL to import again, Markdown
// to read), and below the chat list Export all and Import. Downloads are fetched with the API
// key (a plain link could not send it) and handed to the browser as a file; an import sends the
// chosen file as JSON Lines and shows what was imported, or the lines the server refused.

import { problemOf } from "./api.js";
import { byId, h } from "./dom.js";

export class Transfer {
  constructor(api, { chatId, onImported, onError }) {
    this.api = api;
    this.chatId = chatId; // the open chat's id, or null
    this.onImported = onImported;
    this.onError = onError;
    this.status = byId("transfer-status");
    byId("export-jsonl").addEventListener("click", () => this.exportChat("jsonl"));
    byId("export-markdown").addEventListener("click", () => this.exportChat("markdown"));
    byId("export-all").addEventListener("click", () => this.download("/export?format=jsonl"));
    const input = byId("import-input");
    input.addEventListener("change", () => {
      const [file] = input.files;
      input.value = ""; // the same file may be chosen again
      if (file) this.importFile(file);
    });
  }

  exportChat(format) {
    const chatId = this.chatId();
    if (chatId) this.download(`/chats/${encodeURIComponent(chatId)}/export?format=${format}`);
  }

  async download(path) {
    try {
      const response = await this.api.request("GET", path, { headers: { Accept: "*/*" } });
      const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") ?? "")?.[1] ?? "chatkeep";
      const url = URL.createObjectURL(await response.blob());
      h("a", { href: url, download: name }).click();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      this.onError(error);
    }
  }

  async importFile(file) {
    this.show(h("p", { text: `Importing ${file.name}…` }));
    const headers = { "Content-Type": "application/jsonl", Accept: "application/json" };
    if (this.api.key) headers.Authorization = `Bearer ${this.api.key}`;
    let response;
    try {
      response = await fetch(`${this.api.base}/import`, { method: "POST", headers, body: file, cache: "no-store" });
    } catch {
      this.show(h("p", { className: "transfer-error", text: "No answer from the server: nothing was imported." }));
      return;
    }
    if (!response.ok) {
      this.showRefusal(await problemOf(response.clone()), await response.json().catch(() => ({})));
      return;
    }
    const result = await response.json();
    this.show(h("p", { text: `Imported ${count(result.imported)}; ${count(result.unchanged)} already here, unchanged.` }));
    if (result.imported) this.onImported((result.chats ?? []).filter((c) => c.status === "imported").map((c) => c.id));
  }

  showRefusal(error, problem) {
    const lines = Array.isArray(problem.errors) ? problem.errors.filter((e) => Number.isInteger(e.line)) : [];
    const items = lines.map((e) => h("li", { text: `Line ${e.line}: ${e.detail}` }));
    const summary = lines.length ? "Nothing was imported:" : `Nothing was imported: ${error.detail || error.title}`;
    this.show(h("p", { className: "transfer-error", text: summary }), ...(items.length ? [h("ul", {}, ...items)] : []));
    if (error.needsKey) this.onError(error);
  }

  show(...nodes) {
    this.status.hidden = false;
    this.status.replaceChildren(...nodes);
  }
}

function count(n) {
  return `${n} chat${n === 1 ? "" : "s"}`;
}
