!> A Fortran program that records into the run it was started into (through the environment, as
!> svh_example_c does).
!>
!>     svh_example_fortran [FILE_TO_SAVE]
!>
!> For step = 0 .. 49: f.x = 2 step (svh_log), f.a = step + 0.5 and f.b = -step (svh_log_many); then
!> f.auto = 7 at the automatic step 50; the events "fortran example started as rank K" and "fortran
!> example done"; and saves FILE (category input). Exit status 0 when the aggregator acknowledged
!> everything.
program svh_example_fortran
   use, intrinsic :: iso_c_binding, only: c_double
   use simvue_hpc
   implicit none
   type(svh_handle) :: run
   integer :: ierr, step
   character(len=4096) :: path
   character(len=64) :: message

   ierr = svh_connect_env(run)
   if (ierr /= SVH_OK) then
      write (*, '(a)') "svh_example_fortran: cannot attach: "//svh_last_error()
      error stop 2
   end if
   write (message, '(a,i0)') "fortran example started as rank ", svh_rank(run)
   call check(svh_event(run, message), "event")
   do step = 0, 49
      call check(svh_log(run, "f.x", 2.0_c_double*step, step), "log")
      call check(svh_log_many(run, [character(len=3) :: "f.a", "f.b"], &
                              [real(step, c_double) + 0.5_c_double, -real(step, c_double)], step), "log_many")
   end do
   call check(svh_log(run, "f.auto", 7.0_c_double), "log auto")
   if (command_argument_count() >= 1) then
      call get_command_argument(1, path)
      call check(svh_save(run, path, "input"), "save")
   end if
   call check(svh_event(run, "fortran example done"), "event")
   ierr = svh_close(run)
   if (ierr /= SVH_OK) then
      write (*, '(a)') "svh_example_fortran: close: "//svh_last_error()
      error stop 1
   end if
   write (*, '(a)') "svh_example_fortran: close acknowledged"

contains

   subroutine check(ierr, what)
      integer, intent(in) :: ierr
      character(len=*), intent(in) :: what
      if (ierr /= SVH_OK) then
         write (*, '(a)') "svh_example_fortran: "//what//": "//svh_last_error()
         error stop 1
      end if
   end subroutine check

end program svh_example_fortran
