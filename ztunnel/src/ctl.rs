//! `ztunnel ctl`: troubleshooting a node from a shell, through its daemon's
//! admin endpoint (run it where the endpoint is reachable: on the node, or
//! inside the node's network namespace).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

/// Why a `ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The admin endpoint could not be reached.
    #[error(
        "reaching the admin endpoint {address}: {source} (is the daemon running? is --admin right?)"
    )]
    Connect {
        /// The endpoint.
        address: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The endpoint answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The answer is not what this build expects.
    #[error("unexpected answer from the admin endpoint: {0}")]
    Unexpected(String),
}

/// GETs `path` from the admin endpoint at `admin`; returns the body of a 200.
pub fn get(admin: SocketAddr, path: &str) -> Result<String, CtlError> {
    let connect = |source| CtlError::Connect {
        address: admin,
        source,
    };
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).map_err(connect)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(connect)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").map_err(connect)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(connect)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| CtlError::Unexpected("no HTTP head".to_owned()))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(CtlError::Refused(body.trim().to_owned()));
    }
    Ok(body.to_owned())
}

/// GETs `path` and parses the JSON answer.
pub fn get_json(admin: SocketAddr, path: &str) -> Result<Value, CtlError> {
    let body = get(admin, path)?;
    serde_json::from_str(&body).map_err(|err| CtlError::Unexpected(err.to_string()))
}

/// The workloads table: every pod of the registry, and whether this node captures it.
pub fn workloads(dump: &Value) -> String {
    let captured: Vec<&str> = dump["captured_pods"]
        .as_array()
        .map(|pods| pods.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = format!(
        "{:<28} {:<8} {:<16} {:<40} {}\n",
        "POD", "NODE", "SERVICEACCOUNT", "ADDRESSES", "CAPTURED HERE"
    );
    for pod in dump["registry"]["pods"].as_array().into_iter().flatten() {
        let name = format!(
            "{}/{}",
            pod["namespace"].as_str().unwrap_or_default(),
            pod["name"].as_str().unwrap_or_default()
        );
        let ips: Vec<&str> = pod["ips"]
            .as_array()
            .map(|ips| ips.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<28} {:<8} {:<16} {:<40} {}\n",
            name,
            pod["node"].as_str().unwrap_or_default(),
            pod["serviceAccount"].as_str().unwrap_or_default(),
            ips.join(","),
            if captured.contains(&name.as_str()) {
                "yes"
            } else {
                "-"
            },
        ));
    }
    out
}

/// `check`'s answer in sentences.
pub fn explain_check(answer: &Value) -> String {
    let waypoint = answer["waypoint"].as_str().map(|waypoint| {
        format!(
            "waypoint:    {waypoint}: the connection goes there first, and its policy (L7 \
             included) applies before this decision\n"
        )
    });
    if let Some(endpoints) = answer["endpoints"].as_array() {
        let mut out = format!(
            "service:     {} port {} (to port {} of its endpoints)\ndecision:    {}: {}\n",
            answer["service"].as_str().unwrap_or("?"),
            answer["port"],
            answer["target_port"],
            answer["decision"].as_str().unwrap_or("?").to_uppercase(),
            answer["reason"].as_str().unwrap_or("?"),
        );
        out.extend(waypoint);
        for endpoint in endpoints {
            out.push('\n');
            out.push_str(&explain_check(endpoint));
        }
        return out;
    }
    let side = |side: &Value| {
        format!(
            "{} on {} ({}{})",
            side["pod"].as_str().unwrap_or("?"),
            side["node"].as_str().unwrap_or("?"),
            if side["enrolled"] == true {
                "enrolled"
            } else {
                "not enrolled"
            },
            side["identity"]
                .as_str()
                .filter(|_| side["enrolled"] == true)
                .map(|id| format!(", {id}"))
                .unwrap_or_default()
        )
    };
    let mut out = format!(
        "source:      {}\ndestination: {} port {}\npath:        {}\n",
        side(&answer["source"]),
        side(&answer["destination"]),
        answer["port"],
        answer["path"].as_str().unwrap_or("?"),
    );
    if let Some(mode) = answer["mtls_mode"].as_str() {
        out.push_str(&format!("mTLS mode:   {mode}\n"));
    }
    out.push_str(&format!(
        "decision:    {}: {}\n",
        answer["decision"].as_str().unwrap_or("?").to_uppercase(),
        answer["reason"].as_str().unwrap_or("?")
    ));
    if let Some(dry_run) = answer["dry_run"].as_str() {
        out.push_str(&format!("dry-run:     {dry_run}\n"));
    }
    for note in answer["notes"].as_array().into_iter().flatten() {
        out.push_str(&format!("note:        {}\n", note.as_str().unwrap_or("?")));
    }
    out.extend(waypoint);
    out
}
