//! A few PostgreSQL connections for the examples' participants, each used
//! by one transaction at a time (a transaction needs its connection to
//! itself). A connection that broke is dropped and replaced on demand.

use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

/// Up to `size` connections to one server.
#[derive(Clone)]
pub struct Pool {
    url: Arc<str>,
    idle: Arc<Mutex<Vec<Client>>>,
    permits: Arc<Semaphore>,
}

/// A connection on loan; it goes back to the pool when dropped.
pub struct Conn {
    client: Option<Client>,
    idle: Arc<Mutex<Vec<Client>>>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of at most `size` connections to `url`; none is made yet.
    pub fn new(url: &str, size: usize) -> Pool {
        Pool {
            url: url.into(),
            idle: Arc::default(),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    /// An idle connection, or a new one when none is idle.
    pub async fn get(&self) -> Result<Conn, String> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let reused = self.idle.lock().map_err(|e| e.to_string())?.pop();
        let client = match reused {
            Some(client) => client,
            None => {
                let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
                    .await
                    .map_err(|e| format!("connecting to {}: {e}", self.url))?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(Conn {
            client: Some(client),
            idle: self.idle.clone(),
            _permit: permit,
        })
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a loaned connection is present")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a loaned connection is present")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push(client);
                }
            }
        }
    }
}
