// Markdown to DOM nodes, for replies, safe by construction.
//
// Nothing here parses HTML. Text only ever becomes text nodes, elements come from a fixed set of
// tag names, and the one attribute taken from the text is a link's address, kept only when it
// parses as an absolute http:, https: or mailto: URL (anything else stays text). Raw HTML in a
// reply is therefore shown as the characters it is. Images are never loaded: they become links.
// Work is bounded for hostile input: a delimiter search that failed is not repeated, link
// searches look a bounded distance ahead, and nesting stops at MAX_DEPTH.
//
// The dialect is what models write: paragraphs (a single newline is a line break), ATX headings,
// emphasis, strikethrough, inline code, fenced code blocks, lists (nested by indentation),
// block quotes, rules, pipe tables, links, autolinks and bare URLs. A reply still streaming
// renders as far as it goes (an open code fence runs to the end).

const MAX_DEPTH = 16;
const LINK_LABEL_CHARS = 1000;
const LINK_TARGET_CHARS = 2000;
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const ALIGNMENTS = new Set(["left", "center", "right"]);

const FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])[ \t]*(?:\1[ \t]*){2,}$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const LIST_ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:([ \t]+)(.*))?$/;
const TABLE_DELIMITER = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
const LANGUAGE = /^[\w#+.-]{1,32}$/;
const PUNCTUATION = /[!-/:-@[-`{-~]/;
const WORD_CHAR = /[\p{L}\p{N}]/u;
// What follows "](": a destination, <in brackets> or bare (parentheses balanced one deep), then
// an optional "title", then ")".
const LINK_TARGET =
  /^[ \t\n]*(?:<([^<>\n]*)>|((?:[^\s()\\]|\\.|\((?:[^\s()\\]|\\.)*\))*))(?:[ \t\n]+("[^"]*"|'[^']*'|\([^()]*\)))?[ \t\n]*\)/;
const AUTOLINK = /<((?:https?|mailto):[^\s<>]+)>/iy;
const BARE_URL = /https?:\/\/[^\s<>"'`]+/iy;
const URL_TRAILER = /[.,:;!?'"*_~]+$/;

/** A DocumentFragment showing `source` as formatted text. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  appendBlocks(fragment, expandTabs(source).split("\n"), 0);
  return fragment;
}

/** `raw` as an absolute URL a link may point to, or null when it is anything else. */
export function safeUrl(raw) {
  let url;
  try {
    url = new URL(raw.trim());
  } catch {
    return null;
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

/** A link that opens `href` (already checked by safeUrl) in a new tab, telling it nothing. */
export function externalLink(href, children) {
  const link = element("a", children);
  link.href = href;
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  return link;
}

function expandTabs(source) {
  return source
    .replace(/\r\n?/g, "\n")
    .replace(/^[ \t]+/gm, (space) => space.replace(/\t/g, "    "));
}

function element(tag, children = []) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

// Blocks: each reader takes the lines and the index of its first line, appends its element to
// `parent` and answers the index of the first line after it.

function appendBlocks(parent, lines, depth) {
  let i = 0;
  while (i < lines.length) {
    if (isBlank(lines[i])) {
      i += 1;
    } else if (depth >= MAX_DEPTH) {
      parent.append(element("p", [lines.slice(i).join("\n").trim()]));
      return;
    } else {
      i = blockReader(lines, i)(parent, lines, i, depth);
    }
  }
}

function blockReader(lines, i) {
  const line = lines[i];
  if (FENCE.test(line) && !isBacktickFenceWithBackticks(line)) return readFence;
  if (HEADING.test(line)) return readHeading;
  if (RULE.test(line)) return readRule;
  if (QUOTE.test(line)) return readQuote;
  if (LIST_ITEM.test(line) && !isBlank(LIST_ITEM.exec(line)[4] ?? "")) return readList;
  if (isTableStart(lines, i)) return readTable;
  return readParagraph;
}

function startsBlock(lines, i) {
  return blockReader(lines, i) !== readParagraph;
}

function isBlank(line) {
  return line.trim() === "";
}

function isBacktickFenceWithBackticks(line) {
  const [, , fence, info] = FENCE.exec(line);
  return fence[0] === "`" && info.includes("`");
}

function readFence(parent, lines, start) {
  const [, indent, fence, info] = FENCE.exec(lines[start]);
  const closing = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}[ \\t]*$`);
  const body = [];
  let i = start + 1;
  while (i < lines.length && !closing.test(lines[i])) {
    body.push(lines[i].replace(new RegExp(`^ {0,${indent.length}}`), ""));
    i += 1;
  }
  const code = element("code", [body.join("\n")]);
  const language = info.trim().split(/\s+/)[0];
  if (LANGUAGE.test(language)) {
    code.className = `language-${language}`;
    code.dataset.language = language;
  }
  parent.append(element("pre", [code]));
  return i + 1;
}

function readHeading(parent, lines, i, depth) {
  const [, marks, text = ""] = HEADING.exec(lines[i]);
  // A reply's headings sit under the page's own h1 (the chat) and h2 (each message).
  const heading = element(`h${Math.min(6, marks.length + 2)}`, inline(text, depth));
  heading.className = `md-h${marks.length}`;
  parent.append(heading);
  return i + 1;
}

function readRule(parent, lines, i) {
  parent.append(element("hr"));
  return i + 1;
}

function readQuote(parent, lines, start, depth) {
  const quoted = [];
  let i = start;
  while (i < lines.length && QUOTE.test(lines[i])) {
    quoted.push(QUOTE.exec(lines[i])[1]);
    i += 1;
  }
  const quote = element("blockquote");
  appendBlocks(quote, quoted, depth + 1);
  parent.append(quote);
  return i;
}

function listKind(match) {
  const marker = match[2];
  return /\d/.test(marker) ? `ordered${marker.at(-1)}` : marker;
}

function readList(parent, lines, start, depth) {
  const first = LIST_ITEM.exec(lines[start]);
  const kind = listKind(first);
  const ordered = kind.startsWith("ordered");
  const list = element(ordered ? "ol" : "ul");
  const number = Number.parseInt(first[2], 10);
  if (ordered && number !== 1) list.start = number;
  let i = start;
  while (i < lines.length) {
    const match = LIST_ITEM.exec(lines[i]);
    if (match === null || listKind(match) !== kind || match[1].length > first[1].length + 1) break;
    const [next, itemLines] = listItemLines(lines, i, match);
    const item = element("li");
    appendBlocks(item, itemLines, depth + 1);
    list.append(item);
    i = next;
  }
  parent.append(list);
  return i;
}

function listItemLines(lines, start, match) {
  const [, indent, marker, space = " ", text = ""] = match;
  const contentIndent = indent.length + marker.length + (space.length > 4 ? 1 : space.length);
  const itemLines = [text];
  let i = start + 1;
  let afterBlank = false;
  while (i < lines.length) {
    const line = lines[i];
    const lineIndent = line.length - line.trimStart().length;
    if (isBlank(line)) {
      itemLines.push("");
      afterBlank = true;
    } else if (lineIndent >= contentIndent) {
      itemLines.push(line.slice(contentIndent));
      afterBlank = false;
    } else if (lineIndent > indent.length && LIST_ITEM.test(line.trimStart())) {
      itemLines.push(line.trimStart()); // a nested list indented less than the item's text
      afterBlank = false;
    } else if (afterBlank || startsBlock(lines, i)) {
      break;
    } else {
      itemLines.push(line.trim()); // the paragraph goes on without indentation
    }
    i += 1;
  }
  return [i, itemLines];
}

function isTableStart(lines, i) {
  if (i + 1 >= lines.length || !lines[i].includes("|") || !TABLE_DELIMITER.test(lines[i + 1])) return false;
  return tableCells(lines[i]).length === tableCells(lines[i + 1]).length;
}

function tableCells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function readTable(parent, lines, start, depth) {
  const alignments = tableCells(lines[start + 1]).map((cell) => {
    const left = cell.startsWith(":");
    const right = cell.endsWith(":");
    return left && right ? "center" : right ? "right" : left ? "left" : null;
  });
  const row = (cells, tag) =>
    element(
      "tr",
      alignments.map((alignment, n) => {
        const cell = element(tag, inline(cells[n] ?? "", depth));
        if (ALIGNMENTS.has(alignment)) cell.className = `align-${alignment}`;
        return cell;
      }),
    );
  const head = element("thead", [row(tableCells(lines[start]), "th")]);
  const body = element("tbody");
  let i = start + 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|") && !startsBlock(lines, i)) {
    body.append(row(tableCells(lines[i]), "td"));
    i += 1;
  }
  const table = element("table", [head, body]);
  const scroller = element("div", [table]);
  scroller.className = "md-table";
  parent.append(scroller);
  return i;
}

function readParagraph(parent, lines, start, depth) {
  const text = [lines[start].trim()];
  let i = start + 1;
  while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines, i)) {
    text.push(lines[i].trim());
    i += 1;
  }
  parent.append(element("p", inline(text.join("\n"), depth)));
  return i;
}

// Inline text: a scanner that turns the special characters it can pair into elements and
// leaves everything else, unpaired delimiters and HTML tags included, as plain text.

function inline(text, depth, inLink = false) {
  return new InlineScanner(text, depth, inLink).nodes();
}

class InlineScanner {
  constructor(text, depth, inLink) {
    this.text = text;
    this.depth = depth;
    this.inLink = inLink;
    this.failed = new Set(); // delimiters with no closer left: a later search would fail too
    this.out = [];
    this.plain = "";
  }

  nodes() {
    let i = 0;
    while (i < this.text.length) {
      const found = this.depth < MAX_DEPTH ? this.special(i) : null;
      if (found === null) {
        i = this.character(i);
      } else {
        this.flush();
        this.out.push(found.node);
        i = found.end;
      }
    }
    this.flush();
    return this.out;
  }

  flush() {
    if (this.plain) this.out.push(document.createTextNode(this.plain));
    this.plain = "";
  }

  character(i) {
    const c = this.text[i];
    if (c === "\n") {
      this.plain = this.plain.replace(/ +$/, "");
      this.flush();
      this.out.push(element("br"));
      return i + 1;
    }
    if (c === "\\" && i + 1 < this.text.length && PUNCTUATION.test(this.text[i + 1])) {
      this.plain += this.text[i + 1];
      return i + 2;
    }
    this.plain += c;
    return i + 1;
  }

  special(i) {
    switch (this.text[i]) {
      case "`":
        return this.codeSpan(i);
      case "*":
      case "_":
      case "~":
        return this.emphasis(i);
      case "[":
        return this.inLink ? null : this.link(i, i + 1, false);
      case "!":
        return this.inLink || this.text[i + 1] !== "[" ? null : this.link(i, i + 2, true);
      case "<":
        return this.inLink ? null : this.autolink(i);
      case "h":
      case "H":
        return this.inLink ? null : this.bareUrl(i);
      default:
        return null;
    }
  }

  runLength(i) {
    let end = i;
    while (this.text[end] === this.text[i]) end += 1;
    return end - i;
  }

  codeSpan(i) {
    const length = this.runLength(i);
    const run = "`".repeat(length);
    let end = this.failed.has(run) ? -1 : this.text.indexOf(run, i + length);
    while (end !== -1 && this.runLength(end) !== length) {
      end = this.text.indexOf(run, end + this.runLength(end));
    }
    if (end === -1) {
      this.failed.add(run);
      return { node: document.createTextNode(run), end: i + length };
    }
    let code = this.text.slice(i + length, end).replace(/\n/g, " ");
    if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ") && code.trim()) code = code.slice(1, -1);
    return { node: element("code", [code]), end: end + length };
  }

  emphasis(i) {
    const c = this.text[i];
    const length = this.runLength(i);
    const literal = { node: document.createTextNode(c.repeat(length)), end: i + length };
    const next = this.text[i + length];
    const before = this.text[i - 1] ?? " ";
    if (next === undefined || /\s/.test(next) || (c === "_" && WORD_CHAR.test(before))) return literal;
    if (length > 3 || (c === "~" && length !== 2)) return literal;
    const size = length;
    const close = this.closer(c, size, i + size);
    if (close === -1) return literal;
    const inner = inline(this.text.slice(i + size, close), this.depth + 1, this.inLink);
    const node =
      c === "~"
        ? element("del", inner)
        : size === 1
          ? element("em", inner)
          : size === 2
            ? element("strong", inner)
            : element("strong", [element("em", inner)]);
    return { node, end: close + size };
  }

  /** The index of the run of exactly `size` `c` that closes an emphasis opened before `from`. */
  closer(c, size, from) {
    const key = c.repeat(size);
    if (this.failed.has(key)) return -1;
    let j = from;
    while (j < this.text.length) {
      const ch = this.text[j];
      if (ch === "\\") {
        j += 2;
      } else if (ch === "`") {
        const span = this.codeSpan(j);
        j = span.node.nodeType === Node.TEXT_NODE ? j + this.runLength(j) : span.end;
      } else if (ch === c) {
        const length = this.runLength(j);
        const after = this.text[j + length] ?? " ";
        const closes = !/\s/.test(this.text[j - 1]) && !(c === "_" && WORD_CHAR.test(after));
        if (length === size && closes && j > from) return j;
        j += length;
      } else {
        j += 1;
      }
    }
    this.failed.add(key);
    return -1;
  }

  link(i, labelStart, image) {
    const labelEnd = this.labelEnd(labelStart);
    if (labelEnd === -1 || this.text[labelEnd + 1] !== "(") return null;
    const target = this.linkTarget(labelEnd + 2);
    if (target === null) return null;
    const label = this.text.slice(labelStart, labelEnd);
    const href = safeUrl(target.url);
    if (href === null) {
      return { node: document.createTextNode(this.text.slice(i, target.end)), end: target.end };
    }
    const children = image ? [label.trim() || "image"] : inline(label, this.depth + 1, true);
    const link = externalLink(href, children);
    if (target.title) link.title = target.title;
    if (image) link.className = "md-image-link";
    return { node: link, end: target.end };
  }

  labelEnd(start) {
    let depth = 0;
    const limit = Math.min(this.text.length, start + LINK_LABEL_CHARS);
    for (let j = start; j < limit; j += 1) {
      const ch = this.text[j];
      if (ch === "\\") j += 1;
      else if (ch === "[") depth += 1;
      else if (ch === "]" && depth === 0) return j;
      else if (ch === "]") depth -= 1;
    }
    return -1;
  }

  linkTarget(start) {
    const rest = this.text.slice(start, start + LINK_TARGET_CHARS);
    const found = LINK_TARGET.exec(rest);
    if (found === null) return null;
    const url = (found[1] ?? found[2]).replace(/\\([!-/:-@[-`{-~])/g, "$1");
    return { url, title: found[3]?.slice(1, -1) ?? "", end: start + found[0].length };
  }

  autolink(i) {
    AUTOLINK.lastIndex = i;
    const found = AUTOLINK.exec(this.text);
    const href = found && safeUrl(found[1]);
    if (!href) return null;
    return { node: externalLink(href, [found[1]]), end: i + found[0].length };
  }

  bareUrl(i) {
    if (i > 0 && WORD_CHAR.test(this.text[i - 1])) return null;
    BARE_URL.lastIndex = i;
    const found = BARE_URL.exec(this.text);
    if (found === null) return null;
    let text = found[0].replace(URL_TRAILER, "");
    while (text.endsWith(")") && text.split("(").length < text.split(")").length) {
      text = text.slice(0, -1).replace(URL_TRAILER, "");
    }
    const href = safeUrl(text);
    if (href === null) return null;
    return { node: externalLink(href, [text]), end: i + text.length };
  }
}
