//! `tgrpo teacher-proxy`: the gRPC service (`tgrpo.teacher.v1.Teacher`) that gives a
//! cluster one place that meters the teacher, plus `grpc.health.v1`.
//!
//! Each `GenerateTraces` call runs the same pipeline as the synthesis stage (cache, teacher,
//! parsing, verification) through a shared [`TraceSource`], so the concurrency limit,
//! the cache and the meter hold across every caller.

use futures::future::join_all;
use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_proto::teacher as pb;
use tgrpo_proto::teacher::teacher_server::{Teacher as TeacherRpc, TeacherServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::client::Teacher;
use crate::error::{Result, TeacherError};
use crate::source::{TraceOutcome, TraceSource};
use crate::verify::Verifier;

/// Most samples one `GenerateTraces` call may ask for: a bound on what one caller can
/// put in flight at the teacher (the limit is shared with every other caller anyway).
pub const MAX_SAMPLES_PER_CALL: u32 = 256;

/// Serves `source` on `listener` until `shutdown` is cancelled; health turns
/// `NOT_SERVING` as soon as shutdown starts and calls in flight are finished.
pub async fn run<T: Teacher, V: Verifier>(
    source: TraceSource<T, V>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let address = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |addr| addr.to_string());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TeacherServer<Service<T, V>>>().await;
    tracing::info!(
        %address,
        teacher = %source.teacher().describe(),
        max_concurrent_requests = source.config().max_concurrent_requests,
        "teacher proxy serving"
    );
    let signal = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            health
                .set_not_serving::<TeacherServer<Service<T, V>>>()
                .await;
            tracing::info!("teacher proxy draining");
        }
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(TeacherServer::new(Service { source }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            signal,
        )
        .await
        .map_err(|source| TeacherError::Serve {
            address: address.clone(),
            source,
        })?;
    tracing::info!(%address, "teacher proxy stopped");
    Ok(())
}

struct Service<T, V> {
    source: TraceSource<T, V>,
}

#[tonic::async_trait]
impl<T: Teacher, V: Verifier> TeacherRpc for Service<T, V> {
    async fn generate_traces(
        &self,
        request: Request<pb::TracesRequest>,
    ) -> Result<Response<pb::TracesResponse>, Status> {
        let request = request.into_inner();
        let problem = request
            .problem
            .ok_or_else(|| Status::invalid_argument("`problem` is missing"))
            .and_then(problem_from_proto)?;
        let num_samples = match request.num_samples {
            0 => self.source.config().num_samples_per_problem,
            n if n > MAX_SAMPLES_PER_CALL => {
                return Err(Status::invalid_argument(format!(
                    "`num_samples` {n} is above the limit of {MAX_SAMPLES_PER_CALL}"
                )));
            }
            n => n,
        };
        let last = request
            .first_sample
            .checked_add(num_samples)
            .ok_or_else(|| Status::invalid_argument("`first_sample` + `num_samples` overflows"))?;
        let samples = request.first_sample..last;
        let results = join_all(samples.clone().map(|i| self.source.trace(&problem, i))).await;
        let mut response = pb::TracesResponse::default();
        for (sample_index, result) in samples.zip(results) {
            match result {
                Ok(outcome) => response.traces.push(trace_to_proto(outcome)),
                Err(err) => {
                    tracing::warn!(%err, "on-line trace failed");
                    response.errors.push(pb::SampleError {
                        sample_index,
                        error: err.to_string(),
                    });
                }
            }
        }
        Ok(Response::new(response))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let meter = self.source.meter();
        Ok(Response::new(pb::StatsResponse {
            teacher_requests: meter.teacher_requests,
            retries: meter.retries,
            cache_hits: meter.cache_hits,
            traces: meter.traces,
            passed: meter.passed,
            failures: meter.failures,
            prompt_tokens: meter.prompt_tokens,
            completion_tokens: meter.completion_tokens,
            teacher: self.source.teacher().describe(),
            max_concurrent_requests: u32::try_from(self.source.config().max_concurrent_requests)
                .unwrap_or(u32::MAX),
        }))
    }
}

/// A dataset problem as the proto message, for callers of the proxy.
pub fn problem_to_proto(problem: &Problem) -> pb::Problem {
    let format = match problem.format {
        TestFormat::Mbpp => pb::ProblemFormat::Mbpp,
        TestFormat::HumanEval => pb::ProblemFormat::Humaneval,
        TestFormat::Generic => pb::ProblemFormat::Generic,
    };
    pb::Problem {
        task_id: problem.task_id.clone(),
        text: problem.text.clone(),
        tests: problem.tests.clone(),
        setup_code: problem.setup_code.clone(),
        format: format as i32,
        entry_point: problem.entry_point.clone(),
        prompt: problem.prompt.clone(),
    }
}

/// The proto message as a dataset problem; an unknown format or an empty task id is an
/// `INVALID_ARGUMENT`.
pub fn problem_from_proto(problem: pb::Problem) -> Result<Problem, Status> {
    let format = match pb::ProblemFormat::try_from(problem.format) {
        Ok(pb::ProblemFormat::Unspecified | pb::ProblemFormat::Mbpp) => TestFormat::Mbpp,
        Ok(pb::ProblemFormat::Humaneval) => TestFormat::HumanEval,
        Ok(pb::ProblemFormat::Generic) => TestFormat::Generic,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "problem {}: unknown format {}",
                problem.task_id, problem.format
            )));
        }
    };
    if problem.task_id.is_empty() {
        return Err(Status::invalid_argument("problem `task_id` is empty"));
    }
    Ok(Problem {
        task_id: problem.task_id,
        text: problem.text,
        reference: None,
        tests: problem.tests,
        setup_code: problem.setup_code,
        format,
        entry_point: problem.entry_point,
        prompt: problem.prompt,
    })
}

fn trace_to_proto(outcome: TraceOutcome) -> pb::Trace {
    let record = outcome.record;
    pb::Trace {
        problem_id: record.problem_id,
        sample_index: record.sample_index,
        messages: record
            .messages
            .into_iter()
            .map(|message| pb::Message {
                role: message.role,
                content: message.content,
            })
            .collect(),
        thinking: record.thinking,
        answer: record.answer,
        code: record.code,
        raw_text: record.raw_text,
        finish_reason: record.finish_reason.unwrap_or_default(),
        usage: Some(pb::Usage {
            prompt_tokens: record.usage.prompt_tokens,
            completion_tokens: record.usage.completion_tokens,
            total_tokens: record.usage.total_tokens,
        }),
        teacher_model: record.teacher_model,
        request_hash: record.request_hash,
        passed: record.passed,
        reward: record.reward,
        verdict: record.verdict,
        from_cache: outcome.from_cache,
    }
}
