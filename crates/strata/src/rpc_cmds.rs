//! `strata rpc ...`: list, call and benchmark the gRPC methods of a registered service,
//! through the same consumer stack applications use (discovery, balancing, breakers,
//! retries). Methods and message types come from server reflection of a live instance, so no
//! `.proto` file is needed.

use crate::Output;
use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut};
use clap::Subcommand;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use strata_rpc::Consumer;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[derive(Subcommand, Debug)]
pub enum RpcCommand {
    /// List the gRPC services and methods of SERVICE (a registry service), by reflection.
    List {
        /// Registry service name.
        service: String,
    },
    /// Call SERVICE/Method once with a JSON request and print the JSON response.
    Call {
        /// `SERVICE/Method` (registry service, then a method name or `package.Service/Method`).
        target: String,
        /// The request as JSON (protobuf's JSON mapping).
        #[arg(long, default_value = "{}")]
        data: String,
        /// Deadline of the call.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Call SERVICE/Method from N concurrent clients for a while; print throughput and latency.
    Bench {
        /// `SERVICE/Method`.
        target: String,
        /// The request as JSON.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Concurrent callers.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// How long to run.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

pub async fn rpc(endpoints: &[String], output: Output, command: RpcCommand) -> anyhow::Result<()> {
    // Spans only where the OpenTelemetry variables send them, not to the node by default: a
    // command line exits before its spans' batch would be posted.
    strata_rpc::init_tracing(strata_rpc::TraceConfig::from_env());
    let client = || strata_client::Client::new(endpoints);
    match command {
        RpcCommand::List { service } => {
            let consumer = Consumer::builder(client(), &service).build();
            let pool = reflect(&consumer, &service).await?;
            let mut listed = BTreeMap::new();
            for s in pool.services() {
                if is_builtin(s.full_name()) {
                    continue;
                }
                let methods: Vec<_> = s
                    .methods()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name(),
                            "input": m.input().full_name(),
                            "output": m.output().full_name(),
                            "client_streaming": m.is_client_streaming(),
                            "server_streaming": m.is_server_streaming(),
                        })
                    })
                    .collect();
                listed.insert(s.full_name().to_string(), methods);
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&listed)?),
                Output::Table => {
                    for (name, methods) in &listed {
                        println!("{name}");
                        for m in methods {
                            let stream = |flag: &serde_json::Value| {
                                if flag.as_bool() == Some(true) {
                                    "stream "
                                } else {
                                    ""
                                }
                            };
                            println!(
                                "  {}({}{}) returns ({}{})",
                                m["name"].as_str().unwrap_or(""),
                                stream(&m["client_streaming"]),
                                m["input"].as_str().unwrap_or(""),
                                stream(&m["server_streaming"]),
                                m["output"].as_str().unwrap_or(""),
                            );
                        }
                    }
                }
            }
            Ok(())
        }
        RpcCommand::Call {
            target,
            data,
            timeout,
        } => {
            let (consumer, method, request) = prepare(client(), &target, &data).await?;
            let response = unary(&consumer, &method, request, Some(timeout))
                .await
                .map_err(|status| anyhow!("{}: {}", code_name(status.code()), status.message()))?;
            let json = serde_json::to_value(&response)?;
            match output {
                Output::Json => println!("{json}"),
                Output::Table => println!("{}", serde_json::to_string_pretty(&json)?),
            }
            Ok(())
        }
        RpcCommand::Bench {
            target,
            data,
            clients,
            duration,
        } => {
            let (consumer, method, request) = prepare(client(), &target, &data).await?;
            bench(
                &consumer,
                &method,
                request,
                clients.max(1),
                duration,
                output,
            )
            .await
        }
    }
}

/// The consumer, method and request of `SERVICE/Method` with `data`.
async fn prepare(
    client: strata_client::Client,
    target: &str,
    data: &str,
) -> anyhow::Result<(Consumer, MethodDescriptor, DynamicMessage)> {
    let (service, method) = split_target(target)?;
    let consumer = Consumer::builder(client, service).build();
    let pool = reflect(&consumer, service).await?;
    let method = find_method(&pool, method)?;
    let request = parse_request(&method, data)?;
    Ok((consumer, method, request))
}

fn code_name(code: tonic::Code) -> &'static str {
    strata_rpc::service_config::code_name(code)
}

fn is_builtin(name: &str) -> bool {
    name.starts_with("grpc.reflection.") || name.starts_with("grpc.health.")
}

fn split_target(target: &str) -> anyhow::Result<(&str, &str)> {
    match target.split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            Ok((service, method))
        }
        _ => bail!("{target:?}: expected SERVICE/Method, e.g. orders/Create or orders/orders.v1.Orders/Create"),
    }
}

/// Finds `Method`, `package.Service/Method` or `package.Service.Method` among the services.
fn find_method(pool: &DescriptorPool, wanted: &str) -> anyhow::Result<MethodDescriptor> {
    let wanted = wanted.replace('/', ".");
    let mut found: Vec<MethodDescriptor> = pool
        .services()
        .filter(|s| !is_builtin(s.full_name()))
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .filter(|m| m.full_name() == wanted || m.name() == wanted)
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => {
            let all: Vec<String> = pool
                .services()
                .filter(|s| !is_builtin(s.full_name()))
                .flat_map(|s| {
                    s.methods()
                        .map(|m| m.full_name().to_string())
                        .collect::<Vec<_>>()
                })
                .collect();
            bail!("no method {wanted:?}; the service has: {}", all.join(", "))
        }
        _ => bail!(
            "{wanted:?} is ambiguous: {}",
            found
                .iter()
                .map(|m| m.full_name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn parse_request(method: &MethodDescriptor, data: &str) -> anyhow::Result<DynamicMessage> {
    if method.is_client_streaming() || method.is_server_streaming() {
        bail!(
            "{} streams; only unary methods can be called from here",
            method.full_name()
        );
    }
    let mut deserializer = serde_json::Deserializer::from_str(data);
    let message = DynamicMessage::deserialize(method.input(), &mut deserializer)
        .with_context(|| format!("--data is not a valid {}", method.input().full_name()))?;
    deserializer
        .end()
        .with_context(|| format!("--data is not a valid {}", method.input().full_name()))?;
    Ok(message)
}

/// Asks a live instance for its services' descriptors.
async fn reflect(consumer: &Consumer, service: &str) -> anyhow::Result<DescriptorPool> {
    let mut client = ServerReflectionClient::new(consumer.clone());
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![ask(MessageRequest::ListServices(String::new()))];
    let answer = |response: Option<MessageResponse>| -> anyhow::Result<MessageResponse> {
        match response {
            Some(MessageResponse::ErrorResponse(e)) => {
                bail!("reflection: {} (code {})", e.error_message, e.error_code)
            }
            Some(other) => Ok(other),
            None => bail!("reflection: an empty answer"),
        }
    };
    let mut first = client
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .map_err(|s| {
            anyhow!(
                "reflection of {service:?}: {}: {}",
                code_name(s.code()),
                s.message()
            )
        })?
        .into_inner();
    let listed = first
        .message()
        .await
        .map_err(|s| anyhow!("reflection of {service:?}: {}", s.message()))?
        .ok_or_else(|| anyhow!("reflection of {service:?}: no answer"))?;
    let MessageResponse::ListServicesResponse(list) = answer(listed.message_response)? else {
        bail!("reflection of {service:?}: not a service list");
    };
    let symbols: Vec<String> = list
        .service
        .into_iter()
        .map(|s| s.name)
        .filter(|n| !is_builtin(n))
        .collect();
    if symbols.is_empty() {
        bail!("{service:?} serves no service but health and reflection");
    }
    let mut files: BTreeMap<String, prost_types::FileDescriptorProto> = BTreeMap::new();
    let mut wanted: Vec<MessageRequest> = symbols
        .into_iter()
        .map(MessageRequest::FileContainingSymbol)
        .collect();
    // Ask until every dependency is known (servers usually send them all at once).
    for _round in 0..16 {
        if wanted.is_empty() {
            break;
        }
        let batch: Vec<_> = wanted.drain(..).map(ask).collect();
        let n = batch.len();
        let mut stream = client
            .server_reflection_info(futures::stream::iter(batch))
            .await
            .map_err(|s| anyhow!("reflection of {service:?}: {}", s.message()))?
            .into_inner();
        for _ in 0..n {
            let Some(reply) = stream
                .message()
                .await
                .map_err(|s| anyhow!("reflection of {service:?}: {}", s.message()))?
            else {
                break;
            };
            if let MessageResponse::FileDescriptorResponse(fds) = answer(reply.message_response)? {
                for bytes in fds.file_descriptor_proto {
                    let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                        .context("reflection sent a file descriptor that does not decode")?;
                    files.insert(file.name().to_string(), file);
                }
            }
        }
        let missing: HashSet<String> = files
            .values()
            .flat_map(|f| f.dependency.iter().cloned())
            .filter(|d| !files.contains_key(d))
            .collect();
        wanted = missing
            .into_iter()
            .map(MessageRequest::FileByFilename)
            .collect();
    }
    // Dependencies first.
    let mut pool = DescriptorPool::new();
    let mut added: HashSet<String> = HashSet::new();
    while added.len() < files.len() {
        let ready: Vec<_> = files
            .values()
            .filter(|f| !added.contains(f.name()))
            .filter(|f| f.dependency.iter().all(|d| added.contains(d)))
            .cloned()
            .collect();
        if ready.is_empty() {
            bail!("reflection of {service:?}: files with missing or circular imports");
        }
        for file in ready {
            added.insert(file.name().to_string());
            pool.add_file_descriptor_proto(file)
                .context("reflection sent an invalid file descriptor")?;
        }
    }
    Ok(pool)
}

/// Encodes and decodes dynamic messages of one method.
#[derive(Clone)]
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicCodec;
    type Decoder = DynamicCodec;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.clone()
    }
}

impl Encoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: DynamicMessage,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

impl Decoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, tonic::Status> {
        let mut bytes = bytes::BytesMut::with_capacity(src.remaining());
        bytes.put(src);
        DynamicMessage::decode(self.0.clone(), bytes.freeze())
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))
    }
}

async fn unary(
    consumer: &Consumer,
    method: &MethodDescriptor,
    request: DynamicMessage,
    timeout: Option<Duration>,
) -> Result<DynamicMessage, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(consumer.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path)
        .map_err(|e| tonic::Status::internal(format!("method path: {e}")))?;
    let mut request = tonic::Request::new(request);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    grpc.unary(request, path, DynamicCodec(method.output()))
        .await
        .map(tonic::Response::into_inner)
}

async fn bench(
    consumer: &Consumer,
    method: &MethodDescriptor,
    request: DynamicMessage,
    clients: usize,
    duration: Duration,
    output: Output,
) -> anyhow::Result<()> {
    // One call first: a method that fails every time is an error, not a benchmark.
    unary(
        consumer,
        method,
        request.clone(),
        Some(Duration::from_secs(10)),
    )
    .await
    .map_err(|s| {
        anyhow!(
            "the first call failed: {}: {}",
            code_name(s.code()),
            s.message()
        )
    })?;
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let consumer = consumer.clone();
        let method = method.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                match unary(
                    &consumer,
                    &method,
                    request.clone(),
                    Some(Duration::from_secs(10)),
                )
                .await
                {
                    Ok(_) => latencies.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
    };
    let report = serde_json::json!({
        "calls": latencies.len(),
        "errors": errors,
        "seconds": elapsed,
        "calls_per_sec": latencies.len() as f64 / elapsed,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "clients": clients,
    });
    match output {
        Output::Json => println!("{report}"),
        Output::Table => println!(
            "calls={} errors={} calls_per_sec={:.0} p50_us={} p90_us={} p99_us={} clients={clients}",
            latencies.len(),
            errors,
            latencies.len() as f64 / elapsed,
            pct(0.50),
            pct(0.90),
            pct(0.99)
        ),
    }
    Ok(())
}
