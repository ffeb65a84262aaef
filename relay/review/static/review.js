// Keyboard shortcuts for the review UI. Every action is also a plain form: this
// script only presses the buttons a moderator could press.
(function () {
  "use strict";
  function press(id) { var b = document.getElementById(id); if (b) { b.click(); } }
  function go(step) {
    var links = Array.prototype.slice.call(document.querySelectorAll("a.item"));
    if (links.length) { var first = step > 0 ? links[0] : links[links.length - 1]; first.focus(); return; }
    var rel = document.querySelector(step > 0 ? "a[rel=next]" : "a[rel=prev]");
    if (rel) { window.location = rel.href; }
  }
  // A reveal is temporary: when it ends, reload, and the server shows the preview again.
  var revealed = document.querySelector("[data-reblur-seconds]");
  if (revealed) {
    window.setTimeout(function () { window.location.reload(); },
      1000 * Number(revealed.getAttribute("data-reblur-seconds")));
  }
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (target && /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) { return; }
    switch (event.key) {
      case "j": go(1); break;
      case "k": go(-1); break;
      case "r": press("reveal-0"); break;
      case "c": press("confirm"); break;
      case "f": press("false_positive"); break;
      case "e": var why = document.getElementById("why"); if (why) { why.focus(); why.dataset.then = "escalate"; } break;
      case "q": window.location = document.querySelector("a.brand").href; break;
      case "?": var help = document.getElementById("help"); help.hidden = !help.hidden; break;
      default: return;
    }
    event.preventDefault();
  });
})();
