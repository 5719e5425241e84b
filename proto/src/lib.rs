//! The gRPC contracts between tgrpo services.
//!
//! Each service owns one versioned file under `proto/v1/`; this crate only compiles them
//! (with protox, so no `protoc` is needed) and re-exports the generated tonic/prost code,
//! one module per protobuf package. Nothing else lives here: conversions to domain types
//! belong to the crates that own those types.

#![forbid(unsafe_code)]

/// Health-checking is the standard `grpc.health.v1` service from `tonic-health`.
pub mod executor {
    //! `tgrpo.executor.v1`: scoring untrusted code against tests.
    tonic::include_proto!("tgrpo.executor.v1");
}

pub mod learner {
    //! `tgrpo.learner.v1`: rollout workers pull prompts from the learner and push scored
    //! groups to it.
    tonic::include_proto!("tgrpo.learner.v1");
}

pub mod teacher {
    //! `tgrpo.teacher.v1`: on-line, verified teacher traces through the teacher proxy.
    tonic::include_proto!("tgrpo.teacher.v1");
}
