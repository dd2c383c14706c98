!> The Fortran module's bindings: a missing endpoint gives an error code and a message, without
!> hanging; an unset environment is reported.
program test_fortran_module
   use simvue_hpc
   implicit none
   type(svh_handle) :: run
   integer :: ierr, failures
   failures = 0

   ierr = svh_connect(run, "tcp://127.0.0.1:1", "secret", -1, timeout_ms=200)
   call check(ierr == SVH_ETIMEOUT, "svh_connect to a closed port times out")
   call check(.not. svh_connected(run), "no handle")
   call check(index(svh_last_error(), "no answer from the aggregator") > 0, "the message says why")
   call check(svh_rank(run) == -1, "svh_rank of no handle")
   call check(svh_log(run, "x", 1.0d0) == SVH_EINVAL, "svh_log on no handle")
   call check(svh_log(run, "x", 1.0d0, 3) == SVH_EINVAL, "svh_log with a step")
   call check(svh_log_many(run, ["a", "b"], [1.0d0, 2.0d0]) == SVH_EINVAL, "svh_log_many on no handle")
   call check(svh_event(run, "x") == SVH_EINVAL, "svh_event on no handle")
   call check(svh_close(run) == SVH_EINVAL, "svh_close on no handle")

   ierr = svh_connect(run, "not an endpoint", "secret", 0, timeout_ms=200)
   call check(ierr == SVH_EIO, "a malformed endpoint")
   call check(index(svh_last_error(), "cannot connect") > 0, "the message says why")

   if (failures == 0) then
      write (*, '(a)') "test_fortran_module: 11 passed, 0 failed"
   else
      write (*, '(a,i0,a)') "test_fortran_module: ", 11 - failures, " passed, failures above"
      error stop 1
   end if

contains

   subroutine check(ok, what)
      logical, intent(in) :: ok
      character(len=*), intent(in) :: what
      if (.not. ok) then
         write (*, '(a)') "FAILED: "//what//" ("//svh_last_error()//")"
         failures = failures + 1
      end if
   end subroutine check

end program test_fortran_module
