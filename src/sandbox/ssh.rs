//! How a plain (non-model) sandbox instance is reached, as a real cloud's GPU machine
//! is: an `ssh` address (`127.0.0.1`, a port of its own, user `root`) that really
//! answers while the instance runs.
//!
//! Each plain instance gets a loopback listener when it is created (or, for instances
//! loaded at start, when the sandbox starts: a new port, which spotd picks up at its
//! next sync since the provider reports it). While the instance is `running`, a
//! connection gets the SSH identification line (`SSH-2.0-spotd_sandbox`, RFC 4253
//! section 4.2), the client's own line is read, and an `SSH_MSG_DISCONNECT` (reason 11,
//! "by application") says there is no machine behind it; while provisioning, the
//! connection is closed at once, like a host still booting. When the instance is
//! deleted or preempted the listener is closed before the cloud answers, so the port
//! refuses connections from then on; an instance that stopped on its own (a seeded
//! preemption) has its listener closed by the next connection or listing that sees it.
//! Bounds: one listener task per live plain instance (at most the clouds' machines),
//! one short-lived task per connection.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::State;
use crate::providers::protocol::InstanceState;

/// What a connection to a running instance's port is sent first.
pub(crate) const BANNER: &str = "SSH-2.0-spotd_sandbox\r\n";
/// The disconnect's description.
pub(crate) const NO_MACHINE: &str = "spotd sandbox: there is no machine behind this address";
/// How long a connection may take to send its identification line.
const IDENT_TIMEOUT: Duration = Duration::from_secs(10);
/// SSH_MSG_DISCONNECT and SSH_DISCONNECT_BY_APPLICATION (RFC 4253 sections 11.1, 12).
const MSG_DISCONNECT: u8 = 1;
const BY_APPLICATION: u32 = 11;

struct Listener {
    port: u16,
    stop: CancellationToken,
    /// Answered once the task has dropped its listener.
    closed: oneshot::Receiver<()>,
}

/// The listeners of every live plain instance, by `cloud/id`.
pub(crate) struct SshPorts {
    listeners: Mutex<HashMap<String, Listener>>,
    /// The sandbox's own stop: every listener ends with it.
    stop: CancellationToken,
}

fn key(cloud: &str, id: &str) -> String {
    format!("{cloud}/{id}")
}

impl SshPorts {
    pub(crate) fn new(stop: CancellationToken) -> SshPorts {
        SshPorts {
            listeners: Mutex::new(HashMap::new()),
            stop,
        }
    }

    /// The port of instance `id` of `cloud`, if it has a listener.
    pub(crate) fn port(&self, cloud: &str, id: &str) -> Option<u16> {
        let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.get(&key(cloud, id)).map(|x| x.port)
    }

    /// Opens a loopback listener for instance `id` of `cloud` (none twice).
    pub(crate) async fn open(&self, st: Weak<State>, cloud: &str, id: &str) -> Result<u16, String> {
        if let Some(p) = self.port(cloud, id) {
            return Ok(p);
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("sandbox ssh listener: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("sandbox ssh listener: {e}"))?
            .port();
        let stop = self.stop.child_token();
        let (done, closed) = oneshot::channel();
        tokio::spawn(serve(
            listener,
            st,
            (cloud.to_string(), id.to_string()),
            stop.clone(),
            done,
        ));
        let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.insert(key(cloud, id), Listener { port, stop, closed });
        Ok(port)
    }

    /// Closes instance `id`'s listener and waits until its port is released.
    pub(crate) async fn close(&self, cloud: &str, id: &str) {
        let taken = {
            let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            l.remove(&key(cloud, id))
        };
        if let Some(x) = taken {
            x.stop.cancel();
            let _ = x.closed.await;
        }
    }
}

/// Accepts until stopped or until a connection finds the instance gone.
async fn serve(
    listener: TcpListener,
    st: Weak<State>,
    (cloud, id): (String, String),
    stop: CancellationToken,
    done: oneshot::Sender<()>,
) {
    loop {
        let sock = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(_) => {
                    // Out of descriptors, say: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(state) = st.upgrade() else { break };
        let now = state.clock.now();
        let is = {
            let inst = state.instances.lock().await;
            inst.get(&cloud, &id).map(|r| r.state_at(now).0)
        };
        match is {
            Some(InstanceState::Running) => {
                tokio::spawn(greet(sock, stop.clone()));
            }
            Some(InstanceState::Provisioning) => drop(sock),
            _ => {
                drop(sock);
                // Gone: forget it here too (`close` would wait on this very task).
                let mut l = state
                    .ssh
                    .listeners
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                l.remove(&key(&cloud, &id));
                break;
            }
        }
    }
    drop(listener);
    let _ = done.send(());
}

/// The SSH_MSG_DISCONNECT packet (unencrypted, as before key exchange).
pub(crate) fn disconnect_packet() -> Vec<u8> {
    let mut payload = vec![MSG_DISCONNECT];
    payload.extend_from_slice(&BY_APPLICATION.to_be_bytes());
    payload.extend_from_slice(&(NO_MACHINE.len() as u32).to_be_bytes());
    payload.extend_from_slice(NO_MACHINE.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag: empty
                                                    // packet_length + padding_length + payload + padding is a multiple of 8, padding >= 4.
    let mut pad = 8 - (4 + 1 + payload.len()) % 8;
    if pad < 4 {
        pad += 8;
    }
    let mut out = Vec::with_capacity(5 + payload.len() + pad);
    out.extend_from_slice(&((1 + payload.len() + pad) as u32).to_be_bytes());
    out.push(pad as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, pad));
    out
}

/// The identification exchange, then the disconnect.
async fn greet(mut sock: TcpStream, stop: CancellationToken) {
    if sock.write_all(BANNER.as_bytes()).await.is_err() {
        return;
    }
    // The client's line ends with LF; at most 255 bytes (RFC 4253 section 4.2).
    let read_ident = async {
        let mut buf = [0u8; 255];
        let mut n = 0;
        while n < buf.len() {
            match sock.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => {
                    n += k;
                    if buf[..n].contains(&b'\n') {
                        return true;
                    }
                }
            }
        }
        true
    };
    let got = tokio::select! {
        _ = stop.cancelled() => false,
        r = tokio::time::timeout(IDENT_TIMEOUT, read_ident) => r.unwrap_or(false),
    };
    if got {
        let _ = sock.write_all(&disconnect_packet()).await;
    }
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disconnect_is_a_well_formed_packet() {
        let p = disconnect_packet();
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        assert_eq!(p.len(), 4 + len);
        assert_eq!(p.len() % 8, 0);
        let pad = p[4] as usize;
        assert!(pad >= 4);
        assert_eq!(p[5], MSG_DISCONNECT);
        assert_eq!(u32::from_be_bytes([p[6], p[7], p[8], p[9]]), BY_APPLICATION);
        let dl = u32::from_be_bytes([p[10], p[11], p[12], p[13]]) as usize;
        assert_eq!(&p[14..14 + dl], NO_MACHINE.as_bytes());
    }
}
