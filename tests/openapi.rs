//! The OpenAPI document is served, and it describes exactly the routes the app
//! registers (both ways), with the common error answers on every operation.

mod common;

use common::TestApp;
use serde_json::Value;

#[actix_rt::test]
async fn the_document_describes_every_registered_route_and_nothing_else() {
    let mut app = TestApp::spawn(&[]).await;
    let doc: Value = app.get_json("/api/openapi.json").await;
    app.stop().await;
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in dbwarden::api::ROUTES {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is registered but not documented"));
        for method in *methods {
            let op = &item[*method];
            assert!(
                op.is_object(),
                "{method} {path} is registered but not documented"
            );
            for status in ["400", "404", "429", "503"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} documents {status}"
                );
            }
        }
        let documented: Vec<&String> = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
            .collect();
        assert_eq!(
            documented.len(),
            methods.len(),
            "{path}: documented {documented:?}, registered {methods:?}"
        );
    }
    for path in paths.keys() {
        assert!(
            dbwarden::api::ROUTES.iter().any(|(p, _)| p == path),
            "{path} is documented but not registered"
        );
    }
    // Every referenced schema exists.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or("");
        assert!(
            schemas.contains_key(name),
            "schema {name} is referenced but missing"
        );
    }
}
