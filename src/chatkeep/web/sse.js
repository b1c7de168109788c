// Server-sent events read from a fetch response body.
//
// EventSource cannot POST a message nor send an Authorization header, so streamed turns are
// plain fetches whose body is parsed here, as the HTML standard's event-stream format: fields
// per line, a blank line ends an event, lines starting with ":" are comments (keep-alives).

const LINE_BREAK = /\r\n|\r|\n/;

/** The events of `body` as {id, event, data}, in order; ends when the body does. */
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let event = blankEvent();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // A "\r" at the end may be the first half of a "\r\n": keep it for the next chunk.
      const text = pending + value;
      const end = text.endsWith("\r") ? text.length - 1 : text.length;
      const lines = text.slice(0, end).split(LINE_BREAK);
      pending = lines.pop() + text.slice(end);
      for (const line of lines) {
        if (line === "") {
          if (event.data.length > 0) yield { id: event.id, event: event.event, data: event.data.join("\n") };
          event = blankEvent();
        } else if (!line.startsWith(":")) {
          addField(event, line);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // a consumer that stops early frees the connection
  }
}

function blankEvent() {
  return { id: null, event: "message", data: [] };
}

function addField(event, line) {
  const colon = line.indexOf(":");
  const name = colon === -1 ? line : line.slice(0, colon);
  let value = colon === -1 ? "" : line.slice(colon + 1);
  if (value.startsWith(" ")) value = value.slice(1);
  if (name === "data") event.data.push(value);
  else if (name === "event") event.event = value;
  else if (name === "id" && !value.includes("\0")) event.id = value;
}
