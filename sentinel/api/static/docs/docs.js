// Sentinel's native API docs: start Swagger UI on the shipped OpenAPI document.
// Loaded as a file (no inline script) so the page's Content-Security-Policy can forbid inline code.
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    dom_id: "#ui",
    url: "/native/docs/openapi.json",
    deepLinking: false,
    validatorUrl: null, // the default validator is a remote service: never call it
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
