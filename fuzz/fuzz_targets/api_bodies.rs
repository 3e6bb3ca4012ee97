//! Request bodies of the daemon's API: the first byte picks the endpoint,
//! the rest is the body. Each is deserialized as the API does and run
//! through the same validation (`berth::state`, `berth::ecs`); a body that
//! parses must also survive a serialize/deserialize round trip, and every
//! refusal must render as one line with a 4xx/5xx status.
#![no_main]
use std::collections::BTreeMap;

use berth::{
    api::{AddRequest, RemoveRequest, RunTaskRequest},
    ecs::TaskDefinition,
    state::{parse_container_ip, parse_specs, validate_task_name},
    Error,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let outcome = match which % 3 {
        0 => parse::<AddRequest>(body).map(add),
        1 => parse::<RemoveRequest>(body).map(remove),
        _ => serde_json::from_slice::<RunTaskRequest>(body)
            .ok()
            .map(run_task),
    };
    if let Some(Err(e)) = outcome {
        let line = e.to_string();
        assert!(
            !line.contains('\n'),
            "an error of more than one line: {line:?}"
        );
        assert!((400..600).contains(&e.http_status()), "{line}");
    }
});

/// Deserializes like the API; a body that parses round-trips. (Not for
/// `RunTaskRequest`: its task definition is free JSON, and serde_json does
/// not promise that a float survives a round trip.)
fn parse<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) -> Option<T> {
    let req: T = serde_json::from_slice(body).ok()?;
    let again: T = serde_json::from_slice(&serde_json::to_vec(&req).expect("serializes"))
        .expect("round trip parses");
    assert_eq!(again, req);
    Some(req)
}

/// `POST /v1/bindings`.
fn add(req: AddRequest) -> Result<(), Error> {
    validate_task_name(&req.task)?;
    parse_container_ip(&req.container_ip)?;
    for spec in parse_specs(&req.ports)? {
        let _ = spec.expand().count();
    }
    Ok(())
}

/// `POST /v1/bindings/delete`.
fn remove(req: RemoveRequest) -> Result<(), Error> {
    validate_task_name(&req.task)?;
    parse_specs(&req.ports)?;
    Ok(())
}

/// `POST /v1/tasks`.
fn run_task(req: RunTaskRequest) -> Result<(), Error> {
    validate_task_name(&req.name)?;
    let def = TaskDefinition::from_value(&req.task_definition)?;
    let ips = req
        .ips
        .iter()
        .map(|(name, ip)| Ok((name.clone(), parse_container_ip(ip)?)))
        .collect::<Result<BTreeMap<_, _>, Error>>()?;
    def.container_ips(&ips)?;
    Ok(())
}
