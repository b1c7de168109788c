// The message box: Enter sends, Shift+Enter is a new line; while a reply is being written its
// Send button gives way to Stop. It grows with its text up to a limit, then scrolls. Images
// come along by the attach button or a paste, each shown as a thumbnail (removable) until sent.

import { byId, h } from "./dom.js";

const MAX_HEIGHT_PX = 220;
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
const MAX_IMAGES = 10; // as the server takes in one message
const MAX_IMAGE_BYTES = 20 * 1024 * 1024; // the server's default; it refuses larger ones itself

export class Composer {
  constructor({ onSend, onStop }) {
    this.form = byId("composer");
    this.input = byId("prompt");
    this.send = byId("send");
    this.stop = byId("stop");
    this.notice = byId("composer-notice");
    this.attachButton = byId("attach");
    this.fileInput = byId("attach-input");
    this.thumbnails = byId("attachments");
    this.images = []; // data: URLs, in the order attached
    this.busy = false;
    this.attachButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.attach([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    this.input.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files ?? [])].filter((file) => IMAGE_TYPES.includes(file.type));
      if (files.length === 0) return;
      event.preventDefault();
      this.attach(files);
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit(onSend);
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.isComposing) {
        event.preventDefault();
        this.submit(onSend);
      }
    });
    this.input.addEventListener("input", () => this.fit());
    this.stop.addEventListener("click", () => {
      this.stop.disabled = true;
      onStop();
    });
  }

  submit(onSend) {
    const text = this.input.value;
    if (this.busy || !text.trim()) return;
    this.notice.replaceChildren();
    onSend(text, [...this.images]);
  }

  /** Empty the box (the text and its images were sent). */
  clear() {
    this.input.value = "";
    this.setImages([]);
    this.fit();
  }

  /** Put `text` and `images` back (they could not be sent), unless something new was typed meanwhile. */
  restore(text, images = []) {
    if (!this.input.value.trim()) this.input.value = text;
    if (this.images.length === 0) this.setImages(images);
    this.fit();
  }

  /** Read `files` as data: URLs and show each; what is no image, or too large, is said and left out. */
  async attach(files) {
    const refused = [];
    for (const file of files) {
      if (!IMAGE_TYPES.includes(file.type)) refused.push(`${file.name}: not a PNG, JPEG, GIF or WebP image`);
      else if (file.size > MAX_IMAGE_BYTES) refused.push(`${file.name}: over ${MAX_IMAGE_BYTES / 1024 / 1024} MB`);
      else {
        const url = await dataUrl(file);
        // Read first, then added to the images there are now: another paste may have added some meanwhile.
        if (this.images.length >= MAX_IMAGES) refused.push(`${file.name}: at most ${MAX_IMAGES} images a message`);
        else this.setImages([...this.images, url]);
      }
    }
    if (refused.length) {
      this.showNotice(h("p", { className: "notice notice-error", attrs: { role: "alert" }, text: refused.join("; ") }));
    }
    this.input.focus();
  }

  setImages(images) {
    this.images = images;
    this.thumbnails.hidden = images.length === 0;
    this.thumbnails.replaceChildren(
      ...images.map((url, n) =>
        h(
          "li",
          { className: "attachment" },
          h("img", { src: url, alt: `Image ${n + 1} to send` }),
          h("button", {
            type: "button",
            className: "attachment-remove",
            text: "×",
            attrs: { "aria-label": `Remove image ${n + 1}` },
            on: { click: () => this.setImages(this.images.filter((_, kept) => kept !== n)) },
          }),
        ),
      ),
    );
  }

  setBusy(busy) {
    const focused = document.activeElement === this.stop || document.activeElement === this.send;
    this.busy = busy;
    this.send.hidden = busy;
    this.stop.hidden = !busy;
    this.stop.disabled = false;
    if (focused) (busy ? this.stop : this.input).focus();
  }

  /** Stop may be pressed again: the last press did not reach the server. */
  stopAgain() {
    this.stop.disabled = false;
  }

  showNotice(element) {
    this.notice.replaceChildren(element);
  }

  focus() {
    this.input.focus();
  }

  /** After a modal dialog hands focus back to the box, Chromium shows it focused but takes no
   *  typing until it is focused again. */
  refocus() {
    if (document.activeElement !== this.input) return;
    this.input.blur();
    this.input.focus();
  }

  fit() {
    this.input.style.height = "auto";
    this.input.style.height = `${Math.min(this.input.scrollHeight, MAX_HEIGHT_PX)}px`;
  }
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
