// Before/after sliders: the range input moves the clip edge of the FSRCNN layer.
// Without JavaScript the comparison simply stays split at 50 %.
(function () {
  "use strict";
  function wire(box) {
    var range = box.querySelector(".compare__range");
    if (!range) { return; }
    var update = function () { box.style.setProperty("--pos", range.value + "%"); };
    range.addEventListener("input", update);
    update();
  }
  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-compare]"), wire);
  });
})();
