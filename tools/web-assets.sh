#!/usr/bin/env bash
# Swagger UI and ReDoc for /docs and /redoc, taken from the npm registry at install time and served
# from services/api/static/vendor/ (git-ignored): no CDN at run time, no bundles in git.
# swagger-ui-bundle on PyPI ships Swagger UI 4, which cannot render OpenAPI 3.1; Swagger UI 5 can.
# Also AsyncAPI's JSON Schema of its 3.0 documents, which the tests validate /asyncapi.json against.
set -euo pipefail
SWAGGER_UI=swagger-ui-dist@5.32.0
REDOC=redoc@2.5.2
ASYNCAPI_SPECS=@asyncapi/specs@6.11.1
dest=${1:-services/api/static/vendor}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent --loglevel=error "$SWAGGER_UI" "$REDOC" "$ASYNCAPI_SPECS" >/dev/null)
tar -xzf "$work"/swagger-ui-dist-*.tgz -C "$work" package/swagger-ui-bundle.js package/swagger-ui.css \
    package/favicon-32x32.png package/LICENSE
mkdir -p "$work/out/swagger-ui" "$work/out/redoc"
mv "$work"/package/* "$work/out/swagger-ui/"
tar -xzf "$work"/redoc-*.tgz -C "$work" package/bundles/redoc.standalone.js package/LICENSE
mv "$work/package/bundles/redoc.standalone.js" "$work/package/LICENSE" "$work/out/redoc/"
mkdir -p "$work/out/asyncapi"
tar -xzf "$work"/asyncapi-specs-*.tgz -C "$work" 'package/schemas/3.0.0-without-$id.json'
mv "$work/package/schemas/3.0.0-without-\$id.json" "$work/out/asyncapi/3.0.0.json"
echo "$SWAGGER_UI $REDOC $ASYNCAPI_SPECS" > "$work/out/VERSIONS"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$work/out" "$dest"
