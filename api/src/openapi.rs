//! The OpenAPI 3 document of `api serve` (`GET /api/openapi.json`).

use crate::stats::{MAX_IDS, MAX_STREAM_NAME_CHARS};
use crate::MAX_TRACKING_ID_CHARS;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

fn p_query(name: &str, desc: &str, required: bool, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": required, "description": desc, "schema": schema})
}

fn p_path(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn ok_of(data: Value) -> Value {
    json!({"200": {"description": "success", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"status": {"type": "string", "enum": ["success"]}, "data": data}}}}},
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"}})
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

/// The OpenAPI 3 description of the service.
pub fn openapi_document() -> Value {
    let ids = |name: &str, max: usize| {
        p_query(
            name,
            &format!("1 to {MAX_IDS} values, repeat the parameter; each 1 to {max} characters"),
            true,
            json!({"type": "array", "items": {"type": "string", "maxLength": max}, "minItems": 1, "maxItems": MAX_IDS}),
        )
    };
    let date = |name: &str, d: &str| p_query(name, d, true, json!({"type": "string", "format": "date"}));
    let dates = || vec![date("startDate", "first UTC day (YYYY-MM-DD)"), date("stopDate", "exclusive end day (YYYY-MM-DD)")];
    let resolution = p_query(
        "resolution",
        "bucket size; longest range Minute 2 days, Hour 31 days, Day 366 days, Month 5 years",
        true,
        json!({"type": "string", "enum": ["Minute", "Hour", "Day", "Month"]}),
    );
    let with = |mut v: Vec<Value>, extra: Vec<Value>| {
        v.extend(extra);
        Value::Array(v)
    };
    let by = |item: &str| json!({"type": "object", "additionalProperties": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}});
    let sub = json!({"$ref": "#/components/schemas/SubscribeToken"});
    let publ = json!({"$ref": "#/components/schemas/PublishToken"});
    let deleted = json!({"type": "object", "properties": {"id": {"type": "integer"}, "deleted": {"type": "boolean"}}});
    let stream_rule = json!({"type": "object", "required": ["streamName"], "properties": {"streamName": {"type": "string"}, "isRegex": {"type": "boolean"}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "metering-api", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Tokens for syndicated streams and usage statistics. Every route needs `Authorization: Bearer <API secret>`. Scoped secrets reach only the analytics and records routes, for their tracking ids. Series buckets without usage are absent."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/subscribe_token": {
                "post": {"summary": "Create a Subscribe token", "requestBody": json_body(json!({"type": "object", "required": ["streams"], "properties": {
                    "label": {"type": "string"}, "streams": {"type": "array", "items": stream_rule},
                    "tracking": {"type": "object", "properties": {"trackingId": {"type": "string", "maxLength": MAX_TRACKING_ID_CHARS}}},
                    "originCluster": {"type": "string"}, "expires": {"type": "integer", "description": "seconds from now"},
                    "allowedOrigins": {"type": "array", "items": {"type": "string"}}, "allowedIpAddresses": {"type": "array", "items": {"type": "string"}}}})),
                    "responses": ok_of(sub.clone())},
                "get": {"summary": "List Subscribe tokens", "responses": ok_of(json!({"type": "array", "items": sub.clone()}))}
            },
            "/api/subscribe_token/list": {"get": {"summary": "List Subscribe tokens", "responses": ok_of(json!({"type": "array", "items": sub.clone()}))}},
            "/api/subscribe_token/{id}": {
                "parameters": [p_path("id")],
                "get": {"summary": "Get a Subscribe token", "responses": ok_of(sub.clone())},
                "put": {"summary": "Update a Subscribe token (tracking is immutable)", "requestBody": json_body(json!({"type": "object", "properties": {
                    "label": {"type": "string"}, "streams": {"type": "array", "items": stream_rule}, "isActive": {"type": "boolean"},
                    "allowedOrigins": {"type": "array", "items": {"type": "string"}}, "allowedIpAddresses": {"type": "array", "items": {"type": "string"}},
                    "expires": {"type": "integer", "nullable": true}}})), "responses": ok_of(sub.clone())},
                "delete": {"summary": "Delete a Subscribe token", "responses": ok_of(deleted.clone())}
            },
            "/api/publish_token": {
                "post": {"summary": "Create a Publish token", "requestBody": json_body(json!({"type": "object", "required": ["streams"], "properties": {
                    "label": {"type": "string"}, "streams": {"type": "array", "items": stream_rule}, "subscribeRequiresAuth": {"type": "boolean"}}})),
                    "responses": ok_of(publ.clone())},
                "get": {"summary": "List Publish tokens", "responses": ok_of(json!({"type": "array", "items": publ.clone()}))}
            },
            "/api/publish_token/list": {"get": {"summary": "List Publish tokens", "responses": ok_of(json!({"type": "array", "items": publ.clone()}))}},
            "/api/publish_token/{id}": {
                "parameters": [p_path("id")],
                "get": {"summary": "Get a Publish token", "responses": ok_of(publ.clone())},
                "delete": {"summary": "Delete a Publish token", "responses": ok_of(deleted)}
            },
            "/api/token/verify": {"post": {"summary": "Verify a viewer token for a stream and cluster",
                "requestBody": json_body(json!({"type": "object", "required": ["token", "streamName", "cluster"], "properties": {
                    "token": {"type": "string"}, "streamName": {"type": "string"}, "cluster": {"type": "string"}}})),
                "responses": ok_of(json!({"type": "object", "properties": {"tokenId": {"type": "integer"}, "trackingId": {"type": "string", "nullable": true}, "customViewerData": {"type": "string", "nullable": true}}}))}},
            "/api/analytics/tracking/total": {"get": {"summary": "Bytes per tracking id and stream over a range of days (daily rollup)",
                "parameters": with(vec![ids("trackingIds", MAX_TRACKING_ID_CHARS)], dates()), "responses": ok_of(by("TrackingTotal"))}},
            "/api/analytics/tracking/series": {"get": {"summary": "Bytes per tracking id, stream and bucket; empty buckets are absent",
                "parameters": with(vec![ids("trackingIds", MAX_TRACKING_ID_CHARS), resolution.clone()], dates()), "responses": ok_of(by("TrackingSeriesPoint"))}},
            "/api/analytics/tracking/streams/total": {"get": {"summary": "Bytes per stream and tracking id (\"\" = untracked)",
                "parameters": with(vec![ids("streamNames", MAX_STREAM_NAME_CHARS)], dates()), "responses": ok_of(by("StreamTotal"))}},
            "/api/analytics/tracking/streams/series": {"get": {"summary": "Bytes per stream, tracking id and bucket; empty buckets are absent",
                "parameters": with(vec![ids("streamNames", MAX_STREAM_NAME_CHARS), resolution], dates()), "responses": ok_of(by("StreamSeriesPoint"))}},
            "/api/records/viewers": {"post": {"summary": "One record per viewer connection, streamed (at most 31 days)",
                "requestBody": json_body(json!({"type": "object", "required": ["startTime", "endTime"], "properties": {
                    "startTime": {"type": "string", "format": "date-time"}, "endTime": {"type": "string", "format": "date-time", "description": "exclusive"},
                    "trackingIds": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_IDS},
                    "streamNames": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_IDS}},
                    "description": "exactly one of trackingIds and streamNames"})),
                "responses": {"200": {"description": "records, one per line (NDJSON) or CSV with a header line (`Accept: text/csv`)", "content": {
                    "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/ViewerRecord"}},
                    "text/csv": {"schema": {"type": "string"}}}},
                    "400": {"$ref": "#/components/responses/Error"}, "401": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}}}},
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3 document"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "status": {"type": "string", "enum": ["error"]}, "message": {"type": "string"}}}}}}},
            "schemas": {
                "SubscribeToken": {"type": "object", "properties": {"id": {"type": "integer"}, "token": {"type": "string"}, "label": {"type": "string"},
                    "streams": {"type": "array", "items": stream_rule}, "tracking": {"type": "object", "nullable": true, "properties": {"trackingId": {"type": "string"}}},
                    "originCluster": {"type": "string"}, "expiresOn": {"type": "string", "format": "date-time", "nullable": true}, "isActive": {"type": "boolean"},
                    "allowedOrigins": {"type": "array", "items": {"type": "string"}}, "allowedIpAddresses": {"type": "array", "items": {"type": "string"}},
                    "addedOn": {"type": "string", "format": "date-time"}}},
                "PublishToken": {"type": "object", "properties": {"id": {"type": "integer"}, "token": {"type": "string"}, "label": {"type": "string"},
                    "streams": {"type": "array", "items": stream_rule}, "subscribeRequiresAuth": {"type": "boolean"}, "isActive": {"type": "boolean"},
                    "addedOn": {"type": "string", "format": "date-time"}}},
                "TrackingTotal": {"type": "object", "properties": {"streamName": {"type": "string"}, "bytesOut": {"type": "integer"}, "bytesIn": {"type": "integer"}}},
                "TrackingSeriesPoint": {"type": "object", "properties": {"timestamp": {"type": "string", "format": "date-time"}, "streamName": {"type": "string"},
                    "bytesOut": {"type": "integer"}, "bytesIn": {"type": "integer"}}},
                "StreamTotal": {"type": "object", "properties": {"trackingId": {"type": "string"}, "bytesOut": {"type": "integer"}, "bytesIn": {"type": "integer"}}},
                "StreamSeriesPoint": {"type": "object", "properties": {"timestamp": {"type": "string", "format": "date-time"}, "trackingId": {"type": "string"},
                    "bytesOut": {"type": "integer"}, "bytesIn": {"type": "integer"}}},
                "ViewerRecord": {"type": "object", "properties": {"viewerId": {"type": "string"}, "trackingId": {"type": "string"}, "customViewerData": {"type": "string"},
                    "streamName": {"type": "string"}, "clusterId": {"type": "string"}, "startTime": {"type": "string", "format": "date-time"},
                    "endTime": {"type": "string", "format": "date-time"}, "bytesOut": {"type": "integer"}, "bytesIn": {"type": "integer"}}}
            }
        }
    })
}

/// `GET /api/openapi.json`
pub(crate) async fn openapi() -> Response {
    (StatusCode::OK, axum::Json(openapi_document())).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_statistics_route_is_described() {
        let doc = super::openapi_document();
        for path in ["/api/analytics/tracking/total", "/api/analytics/tracking/series", "/api/records/viewers", "/api/token/verify"] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
        assert!(doc["paths"]["/api/analytics/tracking/series"]["get"]["parameters"].is_array());
    }
}
