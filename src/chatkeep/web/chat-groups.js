// The chat list's headings: chats grouped by the day of their last activity, in the browser's
// local time: Today, Yesterday, Previous 7 days, then one heading per month ("March", or
// "March 2025" for another year).

import { h } from "./dom.js";

const DAY_MS = 86_400_000;
const MONTH = new Intl.DateTimeFormat(undefined, { month: "long" });
const MONTH_AND_YEAR = new Intl.DateTimeFormat(undefined, { month: "long", year: "numeric" });

/** The heading of a chat last active at `when`, seen at `now` (both Dates). */
export function activityGroup(when, now = new Date()) {
  const days = calendarDays(when, now);
  if (days <= 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days <= 7) return "Previous 7 days";
  return (when.getFullYear() === now.getFullYear() ? MONTH : MONTH_AND_YEAR).format(when);
}

/** Whole local days from `from` to `to`, counted on the calendar (a day of a clock change is one too). */
function calendarDays(from, to) {
  const day = (date) => Date.UTC(date.getFullYear(), date.getMonth(), date.getDate());
  return Math.round((day(to) - day(from)) / DAY_MS);
}

/** Put a heading before the first chat of each group in `list` (its items in order of activity,
 * each with `data-updated`), replacing the headings it had. */
export function regroup(list, now = new Date()) {
  for (const heading of list.querySelectorAll(":scope > .chat-group")) heading.remove();
  let current = null;
  for (const item of [...list.children]) {
    const group = activityGroup(new Date(item.dataset.updated), now);
    if (group === current) continue;
    current = group;
    item.before(h("li", { className: "chat-group", attrs: { role: "presentation" } }, h("h3", { text: group })));
  }
}
