//! `checkout`: the example consumer. Finds `orders` through the Strata registry and calls it.
//!
//! ```text
//! # Call orders.v1.Orders/Create 20 times a second for 60 s, printing a line a second:
//! cargo run -p strata-examples --bin checkout -- run --rate 20 --duration 60s
//! # Serve checkout.v1.Checkout, whose PlaceOrder calls orders (two hops):
//! cargo run -p strata-examples --bin checkout -- serve
//! ```

use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};
use strata_examples::checkout::checkout_server::{Checkout, CheckoutServer};
use strata_examples::checkout::{PlaceOrderRequest, Receipt};
use strata_examples::orders::orders_client::OrdersClient;
use strata_examples::orders::CreateRequest;
use strata_rpc::{Consumer, ServiceConfig};
use tonic::{Request, Response, Status};

/// Retries for the orders service: `Create` and `Get` are safe to retry when an instance is
/// unavailable (the failover walk-through relies on it).
const SERVICE_CONFIG: &str = r#"{
  "methodConfig": [{
    "name": [{"service": "orders.v1.Orders"}],
    "timeout": "2s",
    "retryPolicy": {
      "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }],
  "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1}
}"#;

#[derive(Parser)]
#[command(about = "The example consumer: calls the orders service found in Strata")]
struct Args {
    /// Strata nodes (comma-separated).
    #[arg(
        long,
        env = "STRATA_ENDPOINTS",
        default_value = "http://127.0.0.1:7700",
        value_delimiter = ',',
        global = true
    )]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Calls orders.v1.Orders/Create in a loop and prints a line a second.
    Run {
        /// Calls per second.
        #[arg(long, default_value_t = 10)]
        rate: u32,
        /// For how long, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Serves checkout.v1.Checkout, which calls orders for each order placed.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Instance id (default checkout-HOST-PORT).
        #[arg(long)]
        id: Option<String>,
    },
}

fn orders(endpoints: &[String]) -> Result<OrdersClient<Consumer>, String> {
    let config = ServiceConfig::from_json(SERVICE_CONFIG)?;
    let consumer = Consumer::builder(strata_examples::strata_client(endpoints), "orders")
        .service_config(config)
        .build();
    Ok(OrdersClient::new(consumer))
}

struct Service {
    id: String,
    orders: OrdersClient<Consumer>,
}

#[tonic::async_trait]
impl Checkout for Service {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Receipt>, Status> {
        let request = request.into_inner();
        // The incoming deadline and trace carry over to this call by themselves.
        let order = self
            .orders
            .clone()
            .create(CreateRequest {
                item: request.item,
                quantity: request.quantity,
                work_ms: request.work_ms,
            })
            .await?
            .into_inner();
        Ok(Response::new(Receipt {
            order_id: order.id,
            orders_instance: order.served_by,
            checkout_instance: self.id.clone(),
        }))
    }
}

async fn run(
    endpoints: &[String],
    rate: u32,
    seconds: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = orders(endpoints)?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut report = Instant::now() + Duration::from_secs(1);
    let (mut ok, mut failed) = (0u64, 0u64);
    let (mut total_ok, mut total_failed) = (0u64, 0u64);
    let mut by_instance: BTreeMap<String, u64> = BTreeMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                let mut client = client.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = client
                        .create(CreateRequest { item: "book".into(), quantity: 1, work_ms: 0 })
                        .await;
                    let _ = tx.send(result.map(|r| r.into_inner().served_by));
                });
            }
            Some(result) = rx.recv() => match result {
                Ok(instance) => {
                    ok += 1;
                    *by_instance.entry(instance).or_default() += 1;
                }
                Err(status) => {
                    failed += 1;
                    eprintln!("failed: {status}");
                }
            },
        }
        if Instant::now() >= report {
            println!("ok={ok} failed={failed} by_instance={by_instance:?}");
            let _ = std::io::stdout().flush();
            total_ok += ok;
            total_failed += failed;
            (ok, failed) = (0, 0);
            by_instance.clear();
            report += Duration::from_secs(1);
        }
    }
    println!(
        "total ok={} failed={}",
        total_ok + ok,
        total_failed + failed
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    strata_examples::init_logging();
    let args = Args::parse();
    match args.command {
        Command::Run { rate, seconds } => run(&args.endpoints, rate, seconds).await,
        Command::Serve { listen, id } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            let local = listener.local_addr()?;
            let id = id.unwrap_or_else(|| format!("checkout-{}-{}", local.ip(), local.port()));
            let service = Service {
                id: id.clone(),
                orders: orders(&args.endpoints)?,
            };
            let provider = strata_rpc::Provider::new(
                strata_examples::strata_client(&args.endpoints),
                "checkout",
            )
            .id(&id)
            .reflection(strata_examples::CHECKOUT_DESCRIPTORS)
            .on_registered(move |_| {
                println!("checkout serving on {local} as {id}");
                let _ = std::io::stdout().flush();
            });
            let routes = tonic::service::Routes::new(CheckoutServer::new(service));
            provider
                .serve(listener, routes, strata_examples::shutdown_signal())
                .await?;
            Ok(())
        }
    }
}
