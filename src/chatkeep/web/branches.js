// A chat's branches on the page: each stored message's own controls. A reply offers Regenerate
// (a new reply to its question); a question offers Edit (an inline editor whose Save asks the
// new text in its place) and, when its reply failed, Regenerate. A message with other versions
// at its place shows `‹ n/m ›`, whose arrows make the previous or next version's branch current.
// What the buttons do is up to the page (`actions`); while a turn of the chat runs they are
// disabled, since the server answers a chat's turns one at a time.

import { h } from "./dom.js";

/**
 * The controls of the stored `message`: null when `actions` is null (a message only shown).
 * `actions`: {busy(), regenerate(article), edit(article), switchTo(article, messageId)}.
 */
export function messageControls(message, actions) {
  if (actions === null) return null;
  const control = (label, name, run, { className = "", edge = false } = {}) => {
    const button = h("button", {
      type: "button",
      className: `message-action ${className}`.trim(),
      text: label,
      attrs: { "aria-label": name },
      on: { click: (event) => run(event.currentTarget.closest(".message")) },
    });
    if (edge) button.dataset.edge = "true";
    button.disabled = edge || actions.busy();
    return button;
  };
  const buttons = [siblingsNav(message.siblings, control, actions)];
  if (message.role === "assistant") {
    buttons.push(control("Regenerate", "Regenerate this reply", (article) => actions.regenerate(article)));
  } else if (message.role === "user") {
    buttons.push(control("Edit", "Edit this message", (article) => actions.edit(article)));
    // Shown only while no stored reply follows (branches.css): its reply failed, or is lost.
    const regenerate = (article) => actions.regenerate(article);
    buttons.push(control("Regenerate", "Regenerate the reply", regenerate, { className: "regenerate-question" }));
  }
  return h("span", { className: "message-controls" }, buttons);
}

/** `‹ n/m ›` for a message with other versions at its place (null: it has none). */
function siblingsNav(siblings, control, actions) {
  if (!siblings || siblings.ids.length < 2) return null;
  const { ids, index } = siblings;
  const go = (to) => (article) => actions.switchTo(article, ids[to]);
  const count = `${index + 1}/${ids.length}`;
  return h(
    "span",
    { className: "siblings", attrs: { role: "group", "aria-label": `Version ${count.replace("/", " of ")}` } },
    control("‹", "Previous version", go(index - 1), { className: "siblings-previous", edge: index === 0 }),
    h("span", { className: "siblings-count", text: count, attrs: { "aria-hidden": "true" } }),
    control("›", "Next version", go(index + 1), { className: "siblings-next", edge: index === ids.length - 1 }),
  );
}

/** Enable or disable every message control under `root`: disabled while a turn of the chat runs. */
export function setControlsBusy(root, busy) {
  for (const button of root.querySelectorAll(".message-action, .message-editor-save")) {
    button.disabled = busy || button.dataset.edge === "true";
  }
}

/**
 * Edit the question `article` in place: its text in a box, Save calls `onSave(text)` (Enter
 * does too, Shift+Enter adds a line), Cancel or Escape puts the message back as it was.
 * `notice`, when given, is shown in the editor (why the last Save failed).
 */
export function openEditor(article, text, { onSave, busy, notice = null }) {
  closeEditor(article);
  const body = article.querySelector(".message-body");
  const footer = article.querySelector(".message-meta");
  const box = h("textarea", {
    className: "message-editor-text",
    value: text,
    rows: Math.min(12, Math.max(2, text.split("\n").length)),
    attrs: { "aria-label": "Edit your message" },
  });
  const save = h("button", { type: "submit", className: "button button-primary message-editor-save", text: "Save" });
  save.disabled = busy();
  const cancel = () => {
    editor.replaceWith(body);
    footer.hidden = false;
    article.querySelector(".message-action[aria-label='Edit this message']")?.focus();
  };
  const submit = () => {
    if (!box.value.trim() || save.disabled) return;
    onSave(box.value);
  };
  const editor = h(
    "form",
    {
      className: "message-editor",
      attrs: { "aria-label": "Edit your message" },
      on: {
        submit: (event) => {
          event.preventDefault();
          submit();
        },
      },
    },
    box,
    h("div", { className: "message-editor-notice" }, notice),
    h(
      "div",
      { className: "message-editor-actions" },
      h("button", { type: "button", className: "button", text: "Cancel", on: { click: cancel } }),
      save,
    ),
  );
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation(); // the page's own Escape closes other things
      cancel();
    } else if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  editor.cancel = cancel;
  body.replaceWith(editor);
  footer.hidden = true;
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

/** Close the editor open on `article`, if any, putting the message back. */
export function closeEditor(article) {
  article.querySelector(".message-editor")?.cancel();
}
