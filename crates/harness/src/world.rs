//! A scenario's whole world in one value: its own nats-server, a client, the streams and the shop.

use async_nats::jetstream;

use crate::{connect, declare_streams, HarnessError, NatsServer, Shop, ShopConfig};

/// Everything one test needs; dropping it stops the shop and the server.
pub struct World {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub shop: Shop,
}

impl World {
    /// A fresh nats-server on a free port, the shop's streams, and the services started with `config`.
    pub async fn start(config: ShopConfig) -> Result<World, HarnessError> {
        let server = NatsServer::start().await?;
        let client = connect(&server.url()).await?;
        let js = jetstream::new(client.clone());
        declare_streams(&js).await?;
        let shop = Shop::start(&server.url(), config).await?;
        Ok(World {
            server,
            client,
            js,
            shop,
        })
    }
}

/// The same as [`World::start`], as a function for terse tests.
pub async fn world(config: ShopConfig) -> Result<World, HarnessError> {
    World::start(config).await
}
