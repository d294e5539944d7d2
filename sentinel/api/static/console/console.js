// Sentinel operator console: the little the pages need beyond plain HTML forms.
// - [data-copy]: copy the named input's value (the new key) to the clipboard;
// - [data-confirm]: ask before submitting (revoke, delete);
// - [data-add-limit]: add an empty limit row to a plan form;
// - [data-once]: a form sent at most once from the page (the create-key form).
// Everything works without this script too (forms post as they are).
"use strict";

document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const input = document.querySelector(copy.dataset.copy);
    if (!input) return;
    input.select();
    const done = () => { copy.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, () => { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
    return;
  }
  const add = event.target.closest("[data-add-limit]");
  if (add) {
    const rows = add.closest("form").querySelector("[data-limit-rows]");
    const last = rows.querySelector(".limit-row:last-child");
    if (!last) return;
    const row = last.cloneNode(true);
    row.querySelectorAll("input").forEach((input) => { input.value = ""; });
    row.querySelectorAll("select").forEach((select) => { select.selectedIndex = 0; });
    row.querySelectorAll(".field-error").forEach((error) => error.remove());
    rows.appendChild(row);
  }
});

document.addEventListener("submit", (event) => {
  const button = event.submitter || event.target.querySelector("[data-confirm]");
  const question = button && button.dataset ? button.dataset.confirm : null;
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  // [data-once]: sent once from this page (a double click sent the key form twice: the browser
  // showed the second answer, "already sent", and the key, in the first, was lost).
  const form = event.target;
  if (form.hasAttribute("data-once")) {
    if (form.dataset.sent) event.preventDefault();
    form.dataset.sent = "1";
  }
});

// A page shown again from the browser's history (back/forward cache) or left after a post that was
// stopped: its data-once forms may be sent again (the server still refuses a repeated nonce).
window.addEventListener("pageshow", () => {
  document.querySelectorAll("form[data-once]").forEach((form) => { delete form.dataset.sent; });
});
