// Swagger UI over this server's own document. No validator badge: it would call a server on the internet.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#ui",
  validatorUrl: null,
  deepLinking: true,
  tryItOutEnabled: false,
});
