// Progressive help only: every page works without it.
"use strict";
document.addEventListener("submit", (ev) => {
  const msg = ev.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) ev.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  // the repositories search box filters the rows shown while typing; Enter asks the server
  const box = document.querySelector("input[data-filter]");
  if (!box) return;
  const rows = document.querySelectorAll(box.getAttribute("data-filter"));
  box.addEventListener("input", () => {
    const q = box.value.toLowerCase();
    rows.forEach((r) => { r.hidden = q !== "" && !r.dataset.name.includes(q); });
  });
});
