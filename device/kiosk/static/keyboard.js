/* The on-screen keyboard. The unit is touch-only, so every text field gets one, with the keys its words need:
   the page's language (simple-keyboard-layouts' French and Spanish, Latin with their accents; Hindi in
   Devanagari; Swahili and English on the English one), Latin letters beside Hindi for names and clinic numbers
   written in Latin script, and a number pad that clinic numbers, phone numbers, years and settings open on.
   simple-keyboard (MIT) draws the keys; it and its layouts are vendored unmodified in vendor/ with their
   licences, so nothing is fetched at run time. This script picks the layout and types into the field.

   It opens when a field is touched (a click), not when a page focuses one, so the page's own buttons stay in
   reach until the worker starts typing; the worker closes it with its Done key or by touching the page. */
import Keyboard from "./vendor/simple-keyboard/index.modern.esm.js";
import english from "./vendor/simple-keyboard-layouts/layouts/english.js";
import french from "./vendor/simple-keyboard-layouts/layouts/french.js";
import hindi from "./vendor/simple-keyboard-layouts/layouts/hindi.js";
import spanish from "./vendor/simple-keyboard-layouts/layouts/spanish.js";

const _ = window.GlaucoScreen._;
const FIELDS = "input:not([type]), input[type=text], input[type=search], input[type=password], input[type=tel], textarea";
const NUMERIC = new Set(["numeric", "tel", "decimal"]);
// a desktop keyboard's keys a touch form has no use for; in their place, a key that changes the layout and Done
const DROPPED = new Set(["{tab}", "{lock}", ".com"]);

function touchRows(rows) {
  const kept = rows.map((row) => row.split(" ").filter((key) => !DROPPED.has(key)).join(" "));
  kept[kept.length - 1] = "{switch} " + kept[kept.length - 1] + " {close}";
  return kept;
}

function letters(layout, label) {
  return { label: label, rows: { default: touchRows(layout.layout.default), shift: touchRows(layout.layout.shift) } };
}

const LAYOUTS = {
  latin: letters(english, "ABC"),
  es: letters(spanish, "ABC"),
  fr: letters(french, "ABC"),
  hi: letters(hindi, "अ"),
  numbers: { label: "123", rows: { default: ["1 2 3 {bksp}", "4 5 6 -", "7 8 9 .", "{switch} 0 + {close}"] } },
};
LAYOUTS.numbers.rows.shift = LAYOUTS.numbers.rows.default;

// Which layouts a field cycles through with the switch key, first the one it opens on.
function layoutsFor(field) {
  const language = document.documentElement.lang;
  const own = LAYOUTS[language] ? language : "latin";
  if (field.dataset.keyboard === "identifier") return own === "hi" ? ["numbers", "latin", "hi"] : ["numbers", own];
  if (NUMERIC.has(field.inputMode)) return ["numbers"];
  return own === "hi" ? ["hi", "latin", "numbers"] : [own, "numbers"];
}

function eligible(field) {
  if (!field || !field.matches || !field.matches(FIELDS) || field.disabled || field.readOnly) return false;
  if (field.dataset.keyboard === "none") return false;
  return !document.querySelector('.keypad[data-for="' + field.id + '"]');  // the PIN has a keypad of its own
}

const container = document.createElement("div");
container.className = "osk simple-keyboard";
container.id = "osk";
container.hidden = true;
container.setAttribute("role", "group");
container.setAttribute("aria-label", _("Keyboard"));
document.body.appendChild(container);

let field = null;
let cycle = ["latin"];
let at = 0;

const keyboard = new Keyboard(container, {
  useButtonTag: true,
  preventMouseDownDefault: true,    // the field keeps the focus and its caret while keys are pressed
  stopMouseDownPropagation: true,
  mergeDisplay: true,
  layout: LAYOUTS.latin.rows,
  buttonTheme: [{ class: "osk-wide", buttons: "{space}" }, { class: "osk-done", buttons: "{close}" }],
  onKeyPress: press,
});

function show(index) {
  at = index % cycle.length;
  const next = cycle[(at + 1) % cycle.length];
  keyboard.setOptions({
    layout: LAYOUTS[cycle[at]].rows,
    layoutName: "default",
    display: {
      "{bksp}": "⌫", "{enter}": "↵", "{shift}": "⇧", "{space}": " ",
      "{switch}": cycle.length > 1 ? LAYOUTS[next].label : " ", "{close}": _("Done"),
    },
  });
  container.querySelectorAll('[data-skbtn="{switch}"]').forEach((key) => { key.disabled = cycle.length < 2; });
  document.body.style.setProperty("--keyboard-height", container.offsetHeight + "px");
}

function open(target) {
  field = target;
  cycle = layoutsFor(target);
  container.hidden = false;
  document.body.classList.add("keyboard-open");
  show(0);
  window.requestAnimationFrame(() => {  // the field in view above the keys
    const box = field.getBoundingClientRect();
    const room = window.innerHeight - container.offsetHeight;
    if (box.top < 8 || box.bottom > room - 8) window.scrollBy(0, box.top - Math.max(8, (room - box.height) / 2));
  });
}

function close() {
  field = null;
  container.hidden = true;
  document.body.classList.remove("keyboard-open");
}

function type(text) {
  const start = field.selectionStart ?? field.value.length;
  const end = field.selectionEnd ?? start;
  const joined = (field.value.slice(0, start) + text).normalize("NFC");  // an accent key joins the letter before it
  const value = joined + field.value.slice(end);
  if (field.maxLength > 0 && value.length > field.maxLength) return;
  field.value = value;
  field.setSelectionRange(joined.length, joined.length);
  field.dispatchEvent(new Event("input", { bubbles: true }));
}

function erase() {
  let start = field.selectionStart ?? field.value.length;
  const end = field.selectionEnd ?? start;
  if (start === end && start > 0) start -= /[\uDC00-\uDFFF]/.test(field.value[start - 1]) ? 2 : 1;
  field.value = field.value.slice(0, start) + field.value.slice(end);
  field.setSelectionRange(start, start);
  field.dispatchEvent(new Event("input", { bubbles: true }));
}

// Enter: a search is sent; in a form of several fields the next one opens, and after the last the keyboard closes.
function enter() {
  const form = field.form;
  const fields = form ? Array.from(form.querySelectorAll(FIELDS)).filter(eligible) : [];
  const next = fields[fields.indexOf(field) + 1];
  if (field.type === "search" && form) {
    close();
    form.requestSubmit();
  } else if (next) {
    next.focus();
    open(next);
  } else {
    close();
  }
}

function press(button) {
  if (!field) return;
  const shifted = keyboard.options.layoutName === "shift";
  if (button === "{close}") close();
  else if (button === "{switch}") show(at + 1);
  else if (button === "{shift}") keyboard.setOptions({ layoutName: shifted ? "default" : "shift" });
  else if (button === "{bksp}") erase();
  else if (button === "{enter}") enter();
  else {
    type(button === "{space}" ? " " : button);
    if (shifted) keyboard.setOptions({ layoutName: "default" });  // one capital, as a phone's keyboard does
  }
}

document.addEventListener("click", (event) => {
  if (container.contains(event.target)) return;
  const target = event.target.closest ? event.target.closest(FIELDS) : null;
  if (eligible(target)) open(target);
  else if (field) close();
});
