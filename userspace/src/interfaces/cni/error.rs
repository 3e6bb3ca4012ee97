//! CNI's error result: `{"cniVersion","code","msg","details"}` on stdout
//! and a non-zero exit (spec, section 5 "Error"). Codes below 100 are the
//! spec's; 100 and up are berth's own.
use serde::Serialize;

/// The codes berth-cni answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    Io = 5,
    Decoding = 6,
    InvalidConfig = 7,
    /// The daemon is unreachable or slow: the runtime should retry.
    TryAgainLater = 11,
    /// STATUS: the daemon is unreachable, so ADD cannot be served.
    NotAvailable = 50,
    /// berth refused the request (a host port taken, ADD twice, …).
    Refused = 100,
    /// CHECK: a mapping is not published as ADD left it.
    CheckFailed = 101,
}

/// One CNI error. `msg` is the one clear line; `details` says more where
/// there is more to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(Code::InvalidConfig, msg)
    }

    /// The JSON the runtime reads, in `cni_version` (the request's, or the
    /// newest berth speaks when the request had none it could read).
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| {
            format!("{{\"cniVersion\":\"{cni_version}\",\"code\":999,\"msg\":\"internal error\"}}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_the_spec_fields() {
        let e = CniError::new(Code::NotAvailable, "berth daemon unreachable")
            .with_details("socket /run/berth/berth.sock");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "1.1.0", "code": 50,
                "msg": "berth daemon unreachable", "details": "socket /run/berth/berth.sock"})
        );
        let v: serde_json::Value =
            serde_json::from_str(&CniError::config("bad").to_json("0.4.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "0.4.0", "code": 7, "msg": "bad"})
        );
    }
}
