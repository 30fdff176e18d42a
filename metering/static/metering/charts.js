/* Draws every chart placeholder of the page (metering.admin_dashboard.figure_html): a
   <div class="mo-chart"> followed by its figure as JSON in <script id="<div id>-figure">.
   Loaded deferred after plotly.js (templates/admin/metering/charts_js.html), so it runs once the
   page is parsed and the first paint never waits for the charts. */
(function () {
  "use strict";
  function followLinks(gd) {
    // A click on a point opens the link in its customdata (a day's raw events).
    gd.on("plotly_click", function (data) {
      var point = data && data.points && data.points[0];
      var url = point && point.customdata;
      if (typeof url === "string" && url) { window.location.assign(url); }
    });
  }
  function draw(div) {
    var source = document.getElementById(div.id + "-figure");
    if (!source || div.getAttribute("data-drawn")) { return; }
    div.setAttribute("data-drawn", "1");
    var figure = JSON.parse(source.textContent);
    var config = JSON.parse(div.getAttribute("data-config") || "{}");
    Plotly.newPlot(div, figure.data, figure.layout, config).then(function (gd) {
      if (div.hasAttribute("data-follow-links")) { followLinks(gd); }
    });
  }
  function drawAll() {
    Array.prototype.forEach.call(document.querySelectorAll("div.mo-chart"), draw);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
