//! The gRPC contracts between tgrpo services.
//!
//! Each service owns one versioned file under `proto/v1/`; this crate only compiles them
//! (with protox, so no `protoc` is needed) and re-exports the generated tonic/prost code,
//! one module per protobuf package. Nothing else lives here: conversions to domain types
//! belong to the crates that own those types.
//!
//! Health checking is the standard `grpc.health.v1` service from `tonic-health`, served
//! by every service beside its own.

#![forbid(unsafe_code)]

/// `tgrpo.executor.v1`: scoring untrusted code against tests.
pub mod executor {
    tonic::include_proto!("tgrpo.executor.v1");
}

/// `tgrpo.learner.v1`: rollout workers pull prompts from the learner and push scored
/// groups to it.
pub mod learner {
    tonic::include_proto!("tgrpo.learner.v1");
}

/// `tgrpo.teacher.v1`: on-line, verified teacher traces through the teacher proxy.
pub mod teacher {
    tonic::include_proto!("tgrpo.teacher.v1");
}
