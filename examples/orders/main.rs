//! `orders`: the example provider. Serves `orders.v1.Orders` and registers in Strata.
//!
//! ```text
//! cargo run -p strata-examples --bin orders -- --endpoints http://127.0.0.1:7700
//! ```
//!
//! It prints `orders serving on ADDRESS as ID` once registered, and
//! `cancelled Create after N ms` when a caller's deadline ends work in progress.

use clap::Parser;
use std::io::Write;
use std::time::{Duration, Instant};
use strata_examples::orders::orders_server::{Orders, OrdersServer};
use strata_examples::orders::{CreateRequest, GetRequest, Order};
use tonic::{Request, Response, Status};

#[derive(Parser)]
#[command(about = "The example provider: serves orders.v1.Orders, registered in Strata")]
struct Args {
    /// Strata nodes (comma-separated).
    #[arg(
        long,
        env = "STRATA_ENDPOINTS",
        default_value = "http://127.0.0.1:7700",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Instance id (default orders-HOST-PORT).
    #[arg(long)]
    id: Option<String>,
    /// Tags (repeatable).
    #[arg(long)]
    tag: Vec<String>,
    /// Metadata KEY=VALUE (repeatable), such as version=v2.
    #[arg(long)]
    meta: Vec<String>,
    /// Answer every call this much later (to show breakers), e.g. 2s.
    #[arg(long, value_parser = humantime_duration, default_value = "0s")]
    delay: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 500ms or 2s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{text:?}: expected a duration like 500ms or 2s")),
    }
}

struct Service {
    id: String,
    delay: Duration,
}

/// Prints a line when dropped before `done` (the call was cancelled).
struct Work {
    started: Instant,
    done: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if !self.done {
            println!(
                "cancelled Create after {} ms",
                self.started.elapsed().as_millis()
            );
            let _ = std::io::stdout().flush();
        }
    }
}

#[tonic::async_trait]
impl Orders for Service {
    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<Order>, Status> {
        let request = request.into_inner();
        if request.item.is_empty() {
            return Err(Status::invalid_argument("item must not be empty"));
        }
        let mut work = Work {
            started: Instant::now(),
            done: false,
        };
        tokio::time::sleep(self.delay + Duration::from_millis(u64::from(request.work_ms))).await;
        work.done = true;
        Ok(Response::new(Order {
            id: format!("{}:{:016x}", self.id, rand::random::<u64>()),
            item: request.item,
            quantity: request.quantity.max(1),
            served_by: self.id.clone(),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Order>, Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let id = request.into_inner().id;
        if !id.contains(':') {
            return Err(Status::not_found(format!("no order {id:?}")));
        }
        Ok(Response::new(Order {
            id,
            item: String::new(),
            quantity: 0,
            served_by: self.id.clone(),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    strata_examples::init_logging();
    let args = Args::parse();
    let client = strata_examples::strata_client(&args.endpoints);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let local = listener.local_addr()?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("orders-{}-{}", local.ip(), local.port()));
    let mut provider = strata_rpc::Provider::new(client, "orders")
        .id(&id)
        .reflection(strata_examples::ORDERS_DESCRIPTORS)
        .warmup(Duration::from_secs(5))
        .on_registered({
            let id = id.clone();
            move |_| {
                println!("orders serving on {local} as {id}");
                let _ = std::io::stdout().flush();
            }
        });
    for tag in &args.tag {
        provider = provider.tag(tag);
    }
    for pair in &args.meta {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--meta {pair:?}: expected KEY=VALUE"))?;
        provider = provider.meta(key, value);
    }
    let routes = tonic::service::Routes::new(OrdersServer::new(Service {
        id: id.clone(),
        delay: args.delay,
    }));
    let shutdown = async {
        strata_examples::shutdown_signal().await;
        println!("orders {id} stopping: deregistering, then draining");
        let _ = std::io::stdout().flush();
    };
    provider.serve(listener, routes, shutdown).await?;
    println!("orders {id} stopped");
    Ok(())
}
