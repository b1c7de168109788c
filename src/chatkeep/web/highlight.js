// Syntax highlighting of the code blocks in replies, by highlight.js (vendor/highlightjs, its
// BSD-3-Clause licence beside it; the version and notice in THIRD_PARTY_NOTICES.md).
//
// highlight.js gives its result as HTML, which no script of this page may assign: its
// Content-Security-Policy enforces Trusted Types with no policy, so innerHTML and every other
// HTML sink throw. That HTML is regular, though: text with & < > " ' escaped, and <span
// class="hljs-…"> elements, nothing else. So it is read back here into text nodes and spans, and
// the code's text stays exactly what the reply wrote (the Copy button copies it unchanged).

import { h } from "./dom.js";
import hljs from "./vendor/highlightjs/highlight.min.js";

const MAX_CHARS = 50_000; // longer blocks stay plain: highlighting takes time in proportion
const PIECE = /<span class="([^"]*)">|<\/span>|([^<]+)/g;
const ENTITY = /&(amp|lt|gt|quot|#x27);/g;
const CHARACTERS = { amp: "&", lt: "<", gt: ">", quot: '"', "#x27": "'" };

hljs.configure({ throwUnescapedHTML: false });

/** Colour the code blocks (`pre > code`) under `root`: in their fence's language when
 * highlight.js knows it, else in the language it finds most likely. */
export function highlightCode(root) {
  for (const code of root.querySelectorAll("pre > code")) highlightBlock(code);
}

function highlightBlock(code) {
  const text = code.textContent;
  if (!text.trim() || text.length > MAX_CHARS) return;
  const named = code.dataset.language?.toLowerCase();
  const language = named && hljs.getLanguage(named) ? named : null;
  const result = language ? hljs.highlight(text, { language, ignoreIllegals: true }) : hljs.highlightAuto(text);
  code.replaceChildren(nodesOf(result.value));
  code.classList.add("hljs");
}

/** The nodes highlight.js's `html` stands for. */
function nodesOf(html) {
  const fragment = document.createDocumentFragment();
  const open = [fragment];
  for (const [, scope, text] of html.matchAll(PIECE)) {
    const parent = open[open.length - 1];
    if (text !== undefined) {
      parent.append(text.replace(ENTITY, (_, name) => CHARACTERS[name]));
    } else if (scope !== undefined) {
      const span = h("span", { className: scope });
      parent.append(span);
      open.push(span);
    } else if (open.length > 1) {
      open.pop();
    }
  }
  return fragment;
}
